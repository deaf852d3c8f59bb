"""``intervene``: apply a list of edits to a model for the length of a ``with`` block.

::

    with conceptvec.intervene(model, [clamp("L29.808", 30), noise("L12.5", 0.1)]) as run:
        model.hf.generate(...)          # or bridge(...), or inside nnsight's trace: run.apply()
    run.fired                          # {'model.layers.29.mlp.down_proj': 7}

On exit, always (exceptions included): hooks are removed and edited weights are copied back
bit-exactly. On a normal exit, an activation edit or steering vector that never touched a
token raises :class:`HookNeverFiredError`, naming it and saying why.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch

from conceptvec.errors import (
    BadInterventionError,
    HookNeverFiredError,
    InterventionInUseError,
    UnsupportedModelError,
)
from conceptvec.models.backends import Fn, Point, Target, resolve
from conceptvec.models.backends.hf import track_passes
from conceptvec.types import ModelSource

from . import guard
from .edit_specs import Edit, Edits, NeuronEdit, Patch, Steer, WeightEdit, check_against, flatten
from .edits import edit_point
from .positions import PassTracker
from .weight_edits import edited_weights

Rows = int | Sequence[int] | None
"""Where one edit acts in a batch: a row, several rows, or every row (None)."""

if TYPE_CHECKING:
    from types import TracebackType


class Intervention:
    """A set of edits applied to one model while the object is entered as a context manager.

    ``fired`` counts forward passes through each hooked place; ``applied`` counts, per edit,
    the passes in which it touched at least one token. ``rows`` (one entry per edit: a batch
    row, a list of rows, or None for every row; or None) confines each activation edit and
    steering vector to those rows of the batch, so that several variants (random controls,
    several knockouts) run side by side in one forward pass or one generation.
    """

    def __init__(
        self,
        model: ModelSource,
        interventions: Edits,
        *,
        check: bool = True,
        rows: Sequence[Rows] | None = None,
    ):
        self.target: Target = resolve(model)
        self.edits = flatten(interventions)
        d = self.target.model.dims
        check_against(self.edits, d.n_layers, d.d_mlp, d.d_model, d.n_experts)
        _check_fits(self.edits, self.target)
        changed = self.target.backend.weights_changed()
        weights = [e for e in self.edits if isinstance(e, WeightEdit)]
        if changed and weights:
            raise BadInterventionError(f"{weights[0]} edits weights, but {changed}")
        self._rows = _row_map(self.edits, rows)
        self.check = check
        self.fired: Counter = Counter()
        self.applied: Counter = Counter()
        self.tracker = PassTracker()
        self._stack: ExitStack | None = None
        self._hidden: dict[int, Fn] = {}
        self._experts: dict[tuple[int, int], Fn] = {}
        self._resid: dict[int, Fn] = {}
        self._lock = threading.Lock()  # held while the block is open
        self._thread: int | None = None

    # ------------------------------------------------------------------ building
    def _hook_functions(self) -> tuple[dict[int, Fn], dict[int, Fn], dict[tuple[int, int], Fn]]:
        """Return the edit functions by layer: MLP activations, residual stream, and (in a
        mixture of experts) one expert's MLP activations by ``(layer, expert)``."""
        by_layer: dict[tuple[Point, int, int | None], list] = {}
        for e in self.edits:
            if not isinstance(e, WeightEdit):
                by_layer.setdefault(_point_of(e), []).append(e)
        hidden: dict[int, Fn] = {}
        resid: dict[int, Fn] = {}
        experts: dict[tuple[int, int], Fn] = {}
        for (kind, layer, expert), edits in sorted(by_layer.items(), key=_unit_order):
            fn = counted(
                edit_point,
                edits,
                self.tracker,
                self.fired,
                self._point(layer, kind, expert),
                self.applied,
                self._rows,
            )
            if expert is not None:
                experts[(layer, expert)] = fn
            else:
                (hidden if kind == "mlp" else resid)[layer] = fn
        return hidden, resid, experts

    def _point(self, layer: int, kind: Point, expert: int | None = None) -> str:
        if expert is None:
            return self.target.point(layer, kind)
        return self.target.backend.expert_point(self.target.model.spec, layer, expert)

    @property
    def weight_edits(self) -> list[WeightEdit]:
        """The edits that change weights (applied on entry, restored on exit)."""
        return [e for e in self.edits if isinstance(e, WeightEdit)]

    # ----------------------------------------------------------- context manager
    def __enter__(self) -> Intervention:
        if not self._lock.acquire(blocking=False):
            where = "this thread" if self._thread == threading.get_ident() else "another thread"
            raise InterventionInUseError(
                f"this Intervention is already active (entered in {where}); it cannot be "
                "nested or shared between threads: make one intervene(...) per block"
            )
        live = self.target.backend.weights_module
        try:
            guard.claim(live)
        except BaseException:
            self._lock.release()
            raise
        self._thread = threading.get_ident()
        self.fired.clear()
        self.applied.clear()
        self.tracker = PassTracker()
        stack = ExitStack()
        stack.callback(guard.release, live)
        try:
            self._hidden, self._resid, self._experts = self._hook_functions()
            stack.enter_context(edited_weights(self.target.model, self.weight_edits))
            if self._hidden or self._resid or self._experts:
                tracking = track_passes(self.target.module, self.tracker.begin)
                stack.callback(tracking.remove)
                stack.enter_context(hooked(self.target, self._hidden, self._resid))
            if self._experts:
                spec = self.target.model.spec
                stack.enter_context(self.target.backend.expert_hooks(spec, self._experts))
        except BaseException:
            try:
                stack.close()
            finally:
                self._thread = None
                self._lock.release()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        entered_in, self._thread = self._thread, None
        try:
            stack.close()  # hooks off, weights back: always, whichever thread exits
        finally:
            self._lock.release()
        if entered_in != threading.get_ident():
            raise InterventionInUseError(
                "this Intervention was exited from another thread than the one that entered "
                "it; its edits are undone, but enter and exit each block in one thread"
            )
        if exc_type is None and self.check:
            self.raise_if_never_fired()

    def apply(self) -> None:
        """Place the activation edits inside the current nnsight trace (nnsight models only;
        a no-op for the hook-based backends, whose hooks are already live)."""
        if self._stack is None:
            raise HookNeverFiredError(
                "apply() was called outside the `with intervene(...)` block; call it inside"
            )
        self.target.backend.place(self.target.model.spec, self._hidden, self._resid)

    # -------------------------------------------------------------------- checks
    def raise_if_never_fired(self) -> None:
        """Raise HookNeverFiredError if an activation edit or steering vector never acted."""
        problems = []
        for e in self.edits:
            if isinstance(e, WeightEdit) or self.applied[e] > 0:
                continue
            kind, layer, expert = _point_of(e)
            where = self._point(layer, kind, expert)
            n = self.fired[where]
            if n == 0:
                how = self.target.backend.run_hint
                problems.append(f"{e}: its hook on {where} never fired ({how})")
            elif isinstance(e, Patch):
                problems.append(
                    f"{e}: its hook on {where} fired {n} time(s) but every pass ran past "
                    f"the {e.n_positions} positions its values cover"
                )
            else:
                hint = (
                    " ('generated' needs generate(); a single forward pass is all prompt)"
                    if e.positions == "generated"
                    else ""
                )
                problems.append(
                    f"{e}: its hook on {where} fired {n} time(s) but no token matched "
                    f"positions={e.positions!r}{hint}"
                )
        if problems:
            raise HookNeverFiredError("; ".join(problems))

    def __repr__(self) -> str:
        edits = ", ".join(str(e) for e in self.edits)
        return f"Intervention([{edits}], backend={self.target.backend})"


def _unit_order(item: tuple) -> tuple:
    """Sort key of ``((kind, layer, expert), edits)``: by layer, then expert."""
    (kind, layer, expert), _ = item
    return (layer, -1 if expert is None else expert, kind)


def _point_of(e: Edit) -> tuple[Point, int, int | None]:
    """Return the hook point (kind, layer, expert or None) an activation edit acts on."""
    if isinstance(e, NeuronEdit):
        return "mlp", e.neuron.layer, e.neuron.expert
    if isinstance(e, Steer):
        return "resid", e.layer, None
    if isinstance(e, Patch):
        return e.point, e.layer, None
    raise BadInterventionError(f"{e} is not an activation edit")


def counted(
    edit: Callable[..., torch.Tensor],
    edits: list[NeuronEdit | Steer | Patch],
    tracker: PassTracker,
    fired: Counter,
    key: Any,
    applied: Counter,
    rows: dict[Edit, int | list[int]] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``t -> edit(t, edits, ...)`` that counts each call in ``fired[key]``
    (``edit`` is :func:`edit_point`)."""

    def run(t: torch.Tensor) -> torch.Tensor:
        fired[key] += 1
        return edit(t, edits, tracker, applied, rows)

    return run


def _check_fits(edits: list, target: Target) -> None:
    """Raise if a value cannot be held in the model's dtype (1e308 in a float32 model)."""
    param = next(target.backend.weights_module.parameters(), None)
    if param is None or not param.dtype.is_floating_point:
        return
    biggest = torch.finfo(param.dtype).max
    for e in edits:
        if isinstance(e, NeuronEdit):
            size = abs(e.value)
        elif isinstance(e, Steer):
            size = float(e.vector.double().abs().max()) * abs(e.scale) if e.vector.numel() else 0
        elif isinstance(e, Patch):
            size = float(e.values.double().abs().max())
        else:
            continue
        if size > biggest:
            raise BadInterventionError(
                f"{e}: {size:g} does not fit in this model's {str(param.dtype)[6:]} "
                f"activations (at most {biggest:g}); use a smaller value"
            )


def _row_map(edits: list[Edit], rows: Sequence[Rows] | None) -> dict[Edit, int | list[int]] | None:
    if rows is None:
        return None
    rows = list(rows)
    if len(rows) != len(edits):
        raise BadInterventionError(f"rows has {len(rows)} entries for {len(edits)} edits")
    if any(r is not None for e, r in zip(edits, rows) if isinstance(e, WeightEdit)):
        raise BadInterventionError("weight edits change every row; they cannot have a row")
    out: dict[Edit, int | list[int]] = {}
    for e, r in zip(edits, rows):
        if r is None:
            continue
        if isinstance(r, int):
            out[e] = int(r)
            continue
        if isinstance(e, Patch) or not r:
            raise BadInterventionError(f"{e}: give it one row (an int), not {list(r)}")
        out[e] = [int(x) for x in r]
    return out


def intervene(model: ModelSource, interventions: Edits, *, check: bool = True) -> Intervention:
    """Return a context manager applying ``interventions`` to ``model`` inside its block.

    ``model`` is a :class:`conceptvec.Model`, a ``transformers`` causal LM, a TransformerLens
    ``TransformerBridge``/``HookedTransformer`` or an nnsight ``LanguageModel``; edits are
    :func:`clamp`, :func:`scale`, :func:`zero`, :func:`add`, :func:`mean_ablate`,
    :func:`noise`, :func:`zero_weights`, :func:`replace_weights`, :func:`steer`, or lists of
    them. ``check=False`` skips the never-fired check.
    """
    return Intervention(model, interventions, check=check)


# ------------------------------------------------------------- running a model
def hooked(target: Target, mlp: dict[int, Fn], resid: dict[int, Fn]) -> Any:
    """Return a context manager inside which ``mlp[layer]`` runs on ``layer``'s MLP
    activations and ``resid[layer]`` on its output, through the target's backend (a no-op
    for trace-based backends: see :func:`forward_with`). Hooks are removed on exit."""
    spec = target.model.spec
    if mlp and spec.moe:
        raise UnsupportedModelError(
            f"{spec.family} is a mixture of experts: its MLP activations are per expert; name "
            "the expert in an edit (L1.E2.7): reading activations per expert is not supported yet"
        )
    return target.backend.hooks(spec, mlp, resid)


def forward_with(
    target: Target, ids: torch.Tensor, mask: torch.Tensor | None, mlp: dict[int, Fn]
) -> None:
    """Run one forward pass of ``target`` with ``mlp[layer]`` on each listed layer's MLP
    activation, on every backend (hooks, or functions placed inside a trace)."""
    spec = target.model.spec
    with hooked(target, mlp, {}):
        target.backend.forward(ids, mask, lambda: target.backend.place(spec, mlp, {}))


def pad_id(target: Target) -> int | None:
    """Return the id generation pads with: the model's pad token, else its end-of-sequence."""
    config = target.backend.generation_config
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None) if config is not None else None
        if value is None and target.model._tokenizer is not None:
            value = getattr(target.model._tokenizer, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def logits(
    model: ModelSource,
    input_ids: torch.Tensor,
    interventions: Edits = (),
    rows: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Return ``[batch, tokens, vocab]`` float32 logits of ``input_ids`` with the edits applied,
    through the model's own backend (``rows``: see :class:`Intervention`)."""
    iv = Intervention(model, interventions, rows=rows)
    target = iv.target
    limit = target.model.context_length
    if limit and input_ids.shape[1] > limit:
        raise BadInterventionError(
            f"the input has {input_ids.shape[1]} tokens, more than the model's context of "
            f"{limit}: shorten it"
        )
    with torch.no_grad(), iv:
        out = target.backend.logits(input_ids, None, iv.apply)
    return out.float()


def generate(
    model: ModelSource,
    input_ids: torch.Tensor,
    interventions: Edits = (),
    max_new_tokens: int = 20,
    attention_mask: torch.Tensor | None = None,
    rows: Sequence[Rows] | None = None,
) -> torch.Tensor:
    """Return ``[batch, new tokens]``: greedy continuations of ``input_ids`` with the edits
    applied at every step (KV cache on for HF and nnsight, off for TransformerLens).

    A batch of prompts of different lengths is left-padded with ``attention_mask`` marking
    the real tokens (0 on padding), as a tokenizer with ``padding_side="left"`` returns it.
    Each row then continues exactly as it would alone. Without a mask every token is real.
    TransformerLens has no padding support here, so padded rows run one at a time.
    ``rows`` confines each edit to some rows (see :class:`Intervention`).
    """
    mask = _check_mask(input_ids, attention_mask)
    iv = Intervention(model, interventions, rows=rows)
    target = iv.target
    if rows is not None and not target.backend.torch_hooks:
        raise BadInterventionError(
            f"edits confined to rows need a transformers model in generate, not "
            f"{target.backend.name}; generate each variant on its own"
        )
    limit = target.model.context_length
    if max_new_tokens < 1 or (limit and input_ids.shape[1] + max_new_tokens > limit):
        raise BadInterventionError(
            f"cannot generate {max_new_tokens} tokens after a {input_ids.shape[1]}-token prompt"
            + (f" within the model's context of {limit} tokens" if limit else "")
            + ": shorten the prompt or ask for fewer (at least 1) new tokens"
        )
    with torch.no_grad(), iv:
        return target.backend.generate(input_ids, max_new_tokens, mask, pad_id(target), iv.apply)


def _check_mask(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return the attention mask for ``input_ids`` (all ones when None), checked: same shape,
    0/1 values, padding only on the left, at least one real token per row."""
    if mask is None:
        return torch.ones_like(input_ids)
    if mask.shape != input_ids.shape:
        raise BadInterventionError(
            f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}; "
            "pass the mask the tokenizer returned with the ids"
        )
    mask = mask.to(input_ids.device, torch.long)
    if bool(((mask != 0) & (mask != 1)).any()) or bool((mask.sum(1) == 0).any()):
        raise BadInterventionError("attention_mask must be 0/1 with a real token in every row")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise BadInterventionError(
            "generation needs left padding (padding only before the prompt); set "
            'tokenizer.padding_side = "left"'
        )
    return mask
