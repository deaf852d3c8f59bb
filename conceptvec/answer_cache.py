"""Greedy answers of an unedited model, kept on disk per weights and prompt (JSON).

The base model's answers are the references of every QA score, and every ``eval``,
``unlearn`` and ``concepts build`` asked for them again: minutes of generation on a CPU.
Here they are kept in ``$CONCEPTVEC_CACHE/answers/<weights>.json``, one file per model:

- **weights**: a sha256 over the bytes of every parameter and buffer of the live torch
  module (names, dtypes and shapes included), so a trained, edited or re-quantized model,
  whatever its name or file, never reads another's answers. It is recomputed on every call
  (about a second per GB), since weights can change in place without any other sign;
- **key**: the backend, the prompt's token ids, ``max_new_tokens`` and the pad id;
- **value**: the generated token ids (decoded by the caller, so the tokenizer's decoding is
  not frozen in the cache).

Nothing is cached while a hook or a replaced ``forward`` is on the module (an intervention
in a ``with`` block around the call would change the answers without changing the
weights). Files are JSON written to a temporary name then renamed; a damaged or foreign
file is ignored and rewritten. ``CONCEPTVEC_ANSWER_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .models.disk_cache import _open_regular, _write_atomically, cache_root

FORMAT = 1
_MEMORY: dict[str, dict[str, list[int]]] = {}


def enabled() -> bool:
    """Return whether answers are cached (``CONCEPTVEC_ANSWER_CACHE`` is not ``0``)."""
    return os.environ.get("CONCEPTVEC_ANSWER_CACHE", "1") != "0"


def weights_hash(module: torch.nn.Module) -> str:
    """Return a sha256 over every parameter and buffer of ``module`` (name, dtype, shape,
    bytes)."""
    h = hashlib.sha256(f"conceptvec-answers-{FORMAT}".encode())
    tensors: list[tuple[str, torch.Tensor]] = list(module.named_parameters())
    tensors += list(module.named_buffers())
    for name, t in sorted(tensors, key=lambda x: x[0]):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        flat = t.detach().reshape(-1).cpu().contiguous()
        if flat.dtype == torch.bfloat16:  # numpy has no bf16: hash the same bytes as int16
            flat = flat.view(torch.int16)
        h.update(flat.numpy().tobytes())
    return h.hexdigest()


def hooked(module: torch.nn.Module) -> bool:
    """Return whether any hook or replaced ``forward`` could change ``module``'s outputs."""
    from torch.nn.modules import module as nn_module

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(nn_module, name, None):
            return True
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
            return True
    return False


def cached_generate(
    module: torch.nn.Module,
    backend: str,
    rows: Sequence[list[int]],
    max_new_tokens: int,
    pad: int,
    generate: Callable[[list[int]], list[list[int]]],
) -> list[list[int]]:
    """Return the new token ids of each prompt in ``rows``, from the cache where it has them;
    ``generate(indices)`` makes the rest (a list of token-id lists, in that order)."""
    if not enabled() or hooked(module):
        return generate(list(range(len(rows))))
    weights = weights_hash(module)
    table = _load(weights)
    keys = [_key(backend, r, max_new_tokens, pad) for r in rows]
    todo = [i for i, k in enumerate(keys) if k not in table]
    if todo:
        made = generate(todo)
        if hooked(module):  # a hook appeared while generating: keep nothing
            out: list[list[int] | None] = [table.get(k) for k in keys]
            for i, ids in zip(todo, made):
                out[i] = list(ids)
            return [o or [] for o in out]
        for i, ids in zip(todo, made):
            table[keys[i]] = [int(x) for x in ids]
        _save(weights, table)
    return [list(table[k]) for k in keys]


def _key(backend: str, ids: Sequence[int], max_new_tokens: int, pad: int) -> str:
    text = json.dumps([backend, [int(x) for x in ids], int(max_new_tokens), int(pad)])
    return hashlib.sha256(text.encode()).hexdigest()


def _path(weights: str) -> Path:
    return cache_root() / "answers" / f"{weights[:32]}.json"


def _load(weights: str) -> dict[str, list[int]]:
    if weights in _MEMORY:
        return _MEMORY[weights]
    table: dict[str, list[int]] = {}
    f = _open_regular(_path(weights))
    if f is not None:
        with f:
            try:
                data = json.loads(f.read().decode("utf-8"))
            except (OSError, ValueError, RecursionError):
                data = None
        if (
            isinstance(data, dict)
            and data.get("format") == FORMAT
            and data.get("weights") == weights
            and isinstance(data.get("answers"), dict)
        ):
            for k, v in data["answers"].items():
                if isinstance(v, list) and all(isinstance(x, int) for x in v):
                    table[str(k)] = v
    _MEMORY[weights] = table
    return table


def _save(weights: str, table: dict[str, list[int]]) -> None:
    _MEMORY.pop(weights, None)  # merge what another process wrote meanwhile
    table.update({k: v for k, v in _load(weights).items() if k not in table})
    _MEMORY[weights] = table
    body = json.dumps({"format": FORMAT, "weights": weights, "answers": table})

    def write(tmp: str) -> None:
        Path(tmp).write_text(body, encoding="utf-8")

    _write_atomically(_path(weights), write)
