"""Torch hooks on one expert of a mixture-of-experts layer.

transformers 5 keeps every expert of a layer in one stacked parameter (``gate_up_proj``
``[experts, 2 d_mlp, d_model]``, ``down_proj`` ``[experts, d_model, d_mlp]``) and runs them
inside one module, so no module's input is one expert's activation. A forward hook on the
layer's experts module sees the tokens, the experts each token was routed to and their
routing weights. For an expert with an edit function it computes that expert's activation
``act(gate x) * (up x)`` for every token of the pass, shaped ``[batch, tokens, d_mlp]`` like
a dense layer's, lets the function change it, and adds ``w * (edited - original) @ down^T``
to the module's output, ``w`` being the token's routing weight for that expert: the change
the edit makes inside the expert, and exactly nothing for tokens not routed to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from conceptvec.errors import UnsupportedModelError

from .base import Fn
from .hf import OwnHook, layer_modules, submodule

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from conceptvec.models.arch import ArchSpec


@contextmanager
def expert_hooks(
    hf: torch.nn.Module, spec: ArchSpec, mlp: dict[tuple[int, int], Fn]
) -> Iterator[None]:
    """Inside the block, run ``mlp[(layer, expert)]`` on that expert's MLP activations
    (``[batch, tokens, d_mlp]``; see the module docstring); every hook is removed on exit."""
    layers = layer_modules(hf, spec)
    by_layer: dict[int, dict[int, Fn]] = {}
    for (layer, expert), fn in mlp.items():
        by_layer.setdefault(layer, {})[expert] = fn
    handles: list[RemovableHandle] = []
    try:
        for layer, fns in sorted(by_layer.items()):
            experts = submodule(layers[layer], spec.down_module, "the layer's experts")
            block = submodule(layers[layer], spec.down_module.rpartition(".")[0], "the MoE block")
            shape: dict[str, torch.Size] = {}

            def remember(_module: torch.nn.Module, args: tuple, shape: dict = shape) -> None:
                shape["tokens"] = args[0].shape[:-1]  # [batch, tokens] before it is flattened

            handles.append(block.register_forward_pre_hook(OwnHook(remember)))
            hook = _edit_experts(spec, experts, fns, shape)
            handles.append(experts.register_forward_hook(OwnHook(hook), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _stacked(spec: ArchSpec, experts: torch.nn.Module, matrix: str, expert: int) -> torch.Tensor:
    """Return one expert's ``[out, in]`` block of ``matrix`` from the stacked parameter."""
    key, block, blocks = spec.stacked[matrix]
    try:
        w = getattr(experts, key.rpartition(".")[2])[expert]
    except (AttributeError, IndexError):
        raise UnsupportedModelError(
            f"{type(experts).__name__} keeps no stacked {matrix} weights for expert {expert}; "
            "per-expert edits need transformers 5's stacked experts"
        ) from None
    size = w.shape[0] // blocks
    return w[block * size : (block + 1) * size]


def _edit_experts(
    spec: ArchSpec, experts: torch.nn.Module, fns: dict[int, Fn], shape: dict[str, torch.Size]
) -> Callable:
    act = getattr(experts, "act_fn", None)
    if act is None:
        raise UnsupportedModelError(
            f"{type(experts).__name__} has no act_fn; conceptvec cannot recompute its experts"
        )

    def hook(
        _module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor
    ) -> torch.Tensor:
        names = ("hidden_states", "top_k_index", "top_k_weights")
        x, index, weights = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
        tokens = shape.get("tokens", torch.Size([1, x.shape[0]]))
        out = output
        for expert, fn in sorted(fns.items()):
            gate = _stacked(spec, experts, "gate", expert)
            up = _stacked(spec, experts, "up", expert)
            down = _stacked(spec, experts, "down", expert)  # [d_model, d_mlp]
            h = act(x @ gate.T) * (x @ up.T)  # [tokens, d_mlp], as the experts compute it
            edited = fn(h.reshape(*tokens, h.shape[-1])).reshape(h.shape)
            routed = (weights * (index == expert)).sum(-1)[:, None].to(h.dtype)
            delta = torch.where(routed != 0, (edited - h) * routed, 0.0)  # not routed: 0
            out = out + (delta @ down.T).to(out.dtype)
        return out

    return hook
