"""The nnsight backend: the same edits, placed inside an nnsight trace.

nnsight runs the code of a ``with model.trace(...)`` block alongside the forward pass and
lets it read and overwrite module inputs and outputs. :func:`apply` must be called inside a
trace; it visits the edited modules in forward order (layer by layer, the MLP's output
projection before the layer's output), as nnsight requires. nnsight is never imported here:
the model object brings its own envoys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _envoy(root: Any, path: str) -> Any:
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def apply(target: Any, hidden: dict[int, Callable], resid: dict[int, Callable]) -> None:
    """Overwrite the traced model's MLP activations and layer outputs with the edited ones."""
    spec = target.model.spec
    for layer in sorted(set(hidden) | set(resid)):
        block = _envoy(target.obj, f"{spec.layers_module}.{layer}")
        if layer in hidden:
            down = _envoy(block, spec.down_module)
            down.input = hidden[layer](down.input)
        if layer in resid:
            output = block.output
            if isinstance(output, tuple):  # older transformers: (hidden_states, ...)
                block.output = (resid[layer](output[0]),) + tuple(output[1:])
            else:
                block.output = resid[layer](output)


def logits(target: Any, ids: Any, edit: Callable[[], None]) -> Any:
    """Return ``[batch, tokens, vocab]`` logits of one trace with ``edit()`` inside it."""
    with target.obj.trace(ids):
        edit()
        out = target.obj.output.logits.save()
    return out


def generate(
    target: Any,
    ids: Any,
    max_new_tokens: int,
    edit: Callable[[], None],
    pad: int | None,
    mask: Any = None,
) -> Any:
    """Return greedy continuations ``[batch, new tokens]``, with ``edit()`` run at every step
    (``mask``: the left-padded batch's attention mask)."""
    inputs = ids if mask is None else {"input_ids": ids, "attention_mask": mask}
    with target.obj.generate(
        inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
    ) as tracer:
        for _step in tracer.iter[:max_new_tokens]:
            edit()
        out = tracer.result.save()
    return out[:, ids.shape[1] :]
