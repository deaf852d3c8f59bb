"""Who may edit a live model, and how edited weights find their way back.

One process-wide lock guards two registries:

- the owner of each live model: interventions on one model may nest within one thread,
  but a second thread that tries to intervene while the first is inside a block gets
  :class:`InterventionInUseError` (its forward passes would run through the first
  thread's hooks and weights, silently);
- the pristine original of every edited weight vector and the edits active on it, so that
  leaving blocks in any order (not only last-in, first-out) recomputes the vector from the
  original with the edits still active, and the last exit restores the saved bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from conceptvec.errors import InterventionInUseError

LOCK = threading.RLock()
_OWNERS: dict[int, list[int]] = {}  # id(module) -> [thread ident, depth]


def claim(module: object) -> None:
    """Mark ``module`` as being edited by this thread (nesting allowed), or raise."""
    me = threading.get_ident()
    with LOCK:
        owner = _OWNERS.get(id(module))
        if owner is not None and owner[0] != me:
            raise InterventionInUseError(
                f"this model is inside an intervention in another thread ({owner[0]}); "
                "interventions change the shared model, so run one thread per model copy "
                "(copy.deepcopy(model.hf)) or wait for the other block to end"
            )
        if owner is None:
            _OWNERS[id(module)] = [me, 1]
        else:
            owner[1] += 1


def release(module: object) -> None:
    """Undo one :func:`claim` of ``module``."""
    with LOCK:
        owner = _OWNERS.get(id(module))
        if owner is None:
            return
        owner[1] -= 1
        if owner[1] <= 0:
            del _OWNERS[id(module)]


@dataclass
class _Slot:
    """One edited vector: a view of the live weight, its original bytes, the active edits."""

    view: torch.Tensor
    original: torch.Tensor
    edits: list[tuple[object, Callable[[torch.Tensor], torch.Tensor]]] = field(default_factory=list)

    def rewrite(self) -> None:
        value = self.original
        for _, apply in self.edits:
            value = apply(value)
        self.view.copy_(value)


_SLOTS: dict[tuple, _Slot] = {}


def _key(view: torch.Tensor) -> tuple:
    return (
        view.device.type,
        view.untyped_storage().data_ptr(),
        view.storage_offset(),
        tuple(view.stride()),
        tuple(view.shape),
    )


def push(view: torch.Tensor, token: object, apply: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply ``apply(current)`` to the live ``view``, remembering the original on first edit."""
    with LOCK, torch.no_grad():
        key = _key(view)
        slot = _SLOTS.get(key)
        if slot is None:
            slot = _SLOTS[key] = _Slot(view, view.clone())
        slot.edits.append((token, apply))
        slot.rewrite()


def pop(token: object) -> None:
    """Withdraw every edit made under ``token``; vectors with no edit left get their original
    bytes back, the others are recomputed from the original with the edits still active."""
    with LOCK, torch.no_grad():
        for key, slot in list(_SLOTS.items()):
            kept = [(t, f) for t, f in slot.edits if t is not token]
            if len(kept) == len(slot.edits):
                continue
            slot.edits = kept
            if kept:
                slot.rewrite()
            else:
                slot.view.copy_(slot.original)
                del _SLOTS[key]


def active() -> int:
    """Return how many weight vectors are edited right now (0 when everything is restored)."""
    with LOCK:
        return len(_SLOTS)
