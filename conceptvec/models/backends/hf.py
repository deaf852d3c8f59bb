"""The plain ``transformers`` backend: forward hooks on the torch module, and the pass tracker.

One pre-hook per edited layer on the module whose input is the MLP hidden activation
(``mlp.down_proj``; GPT-2's ``mlp.c_proj``, as the :class:`ArchSpec` says), one forward hook
per layer on the decoder layer for the residual stream, and (for every backend) one pre-hook
on the whole model that tells a pass tracker where each forward pass starts. Every handle is
removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from conceptvec.errors import UnsupportedModelError

from .base import Backend, Fn, Place, Point, _nothing

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from conceptvec.models.arch import ArchSpec


def submodule(root: torch.nn.Module, path: str, what: str) -> Any:
    """Return ``root``'s submodule at dotted ``path``, or raise naming what was expected."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UnsupportedModelError(
            f"{type(root).__name__} has no {path} ({what}); is it a causal LM of the family "
            "its config names?"
        ) from None


def layer_modules(hf: torch.nn.Module, spec: ArchSpec) -> Any:
    """Return the decoder-layer list of ``hf`` (where the spec says it is)."""
    return submodule(hf, spec.layers_module, "decoder layers")


class OwnHook:
    """A hook function of ours, registered on a torch module for the length of a block.

    ``copy.deepcopy`` of the module (``copy.deepcopy(model.hf)`` inside an ``intervene``
    block, to run another copy in parallel) would copy the module's hook tables with our
    functions in them, and the copy would keep editing for good: no handle removes them
    there. A deep copy of an ``OwnHook`` is an :class:`_InertHook` instead, which changes
    nothing and removes itself from the copy the first time the copy runs.
    """

    def __init__(self, fn: Callable[..., object]):
        self.fn = fn

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _InertHook:
        return _InertHook()


class _InertHook:
    """What a deep copy of an :class:`OwnHook` becomes: no effect, and gone after one call."""

    def __call__(self, module: torch.nn.Module, *_args: object, **_kwargs: object) -> None:
        for table in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, hook in table.items() if isinstance(hook, _InertHook)]:
                del table[key]  # torch iterates over a copy of the table: safe mid-call
                for extra in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs"):
                    getattr(module, extra, {}).pop(key, None)
                getattr(module, "_forward_hooks_always_called", {}).pop(key, None)

    def __deepcopy__(self, memo: dict) -> _InertHook:
        return _InertHook()


def track_passes(module: torch.nn.Module, begin_pass: Callable[..., None]) -> Any:
    """Register a pre-hook calling ``begin_pass(ids or None, length, past)`` at the start of
    each forward pass of ``module``; return its handle (the caller removes it)."""

    def begin(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", kwargs.get("input"))
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        first = ids if ids is not None else embeds
        if first is None:
            return
        length = int(first.shape[1])
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = (
            int(cache.get_seq_length())
            if cache is not None and hasattr(cache, "get_seq_length")
            else 0
        )
        begin_pass(ids if ids is not None and ids.ndim == 2 else None, length, past)

    return module.register_forward_pre_hook(OwnHook(begin), with_kwargs=True)


@contextmanager
def torch_hooks(
    hf: torch.nn.Module, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]
) -> Iterator[None]:
    """Inside the block, run ``mlp[layer]`` on ``layer``'s MLP activations (a pre-hook on the
    down projection) and ``resid[layer]`` on its output (a forward hook on the layer)."""
    layers = layer_modules(hf, spec)
    handles: list[RemovableHandle] = []
    try:
        for layer, fn in mlp.items():
            down = submodule(layers[layer], spec.down_module, "the MLP's output projection")
            handles.append(down.register_forward_pre_hook(OwnHook(_replace_first_arg(fn))))
        for layer, fn in resid.items():
            handles.append(layers[layer].register_forward_hook(OwnHook(_replace_output(fn))))
        yield
    finally:
        for h in handles:
            h.remove()


def _replace_first_arg(fn: Fn) -> Callable:
    def pre_hook(_module: torch.nn.Module, args: tuple) -> tuple:
        return (fn(args[0]),) + tuple(args[1:])

    return pre_hook


def _replace_output(fn: Fn) -> Callable:
    def hook(_module: torch.nn.Module, _args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):  # older transformers: (hidden_states, ...)
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    return hook


class HFBackend(Backend):
    """A ``transformers`` causal LM (or a :class:`conceptvec.Model`'s module): torch hooks."""

    name = "hf"
    priority = -100  # anything with a config and a state dict: asked last
    torch_hooks = True

    @classmethod
    def claims(cls, obj: object) -> bool:
        """Return True for a torch module with an HF config."""
        return getattr(obj, "config", None) is not None and hasattr(obj, "state_dict")

    @classmethod
    def open(cls, obj: Any) -> Backend:
        """Return the backend over a ``transformers`` model (it has no tokenizer of its own)."""
        return cls(obj, obj, None)

    def point(self, spec: ArchSpec, layer: int, kind: Point) -> str:
        """Return the dotted module name hooked for ``kind`` at ``layer``."""
        base = f"{spec.layers_module}.{layer}"
        return f"{base}.{spec.down_module}" if kind == "mlp" else base

    def hooks(self, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]) -> Any:
        """Return torch hooks on the ``transformers`` module (see :func:`torch_hooks`)."""
        return torch_hooks(self.hf, spec, mlp, resid)

    def expert_hooks(self, spec: ArchSpec, mlp: dict[tuple[int, int], Fn]) -> Any:
        """Return torch hooks on the layers' experts (see :mod:`.experts`)."""
        from .experts import expert_hooks

        return expert_hooks(self.hf, spec, mlp)

    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> Any:
        """Return the module's logits (``place`` is not needed: hooks are live)."""
        del place
        if mask is None:
            return self.hf(input_ids=ids).logits
        return self.hf(input_ids=ids, attention_mask=mask).logits

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> None:
        """Run the base model only (the LM head's logits are not needed)."""
        del place
        self.hf.base_model(input_ids=ids, attention_mask=mask)

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        mask: torch.Tensor,
        pad: int | None,
        place: Place = _nothing,
    ) -> torch.Tensor:
        """Return ``transformers``' greedy continuation (KV cache on)."""
        del place
        out = self.hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return out[:, ids.shape[1] :]
