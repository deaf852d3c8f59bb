"""The torch backend: forward hooks on a ``transformers`` model, and the pass tracker hook.

One pre-hook per edited layer on the module whose input is the MLP hidden activation
(``mlp.down_proj``; GPT-2's ``mlp.c_proj``), one forward hook per steered layer on the
decoder layer, and one pre-hook on the whole model that tells the :class:`PassTracker`
where each forward pass starts. Every handle is returned to the caller, who removes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from conceptvec.errors import UnsupportedModelError
from conceptvec.interventions.edit_specs import NeuronEdit, Steer
from conceptvec.interventions.positions import PassTracker


def submodule(root: torch.nn.Module, path: str, what: str) -> Any:
    """Return ``root``'s submodule at dotted ``path``, or raise naming what was expected."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UnsupportedModelError(
            f"{type(root).__name__} has no {path} ({what}); is it a causal LM of the family "
            "its config names?"
        ) from None


def layer_modules(target: Any) -> Any:
    """Return the decoder-layer list of ``target.hf`` (per the architecture spec)."""
    return submodule(target.hf, target.model.spec.layers_module, "decoder layers")


def mlp_input_name(target: Any, layer: int) -> str:
    """Return the dotted name of the module whose input is ``layer``'s MLP activation."""
    spec = target.model.spec
    return f"{spec.layers_module}.{layer}.{spec.down_module}"


def track_passes(module: torch.nn.Module, tracker: PassTracker) -> Any:
    """Register a pre-hook telling ``tracker`` about each forward pass of ``module``."""

    def begin(_module: Any, args: tuple, kwargs: dict) -> None:
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
        tracker.begin(ids if ids is not None and ids.ndim == 2 else None, length, past)

    return module.register_forward_pre_hook(begin, with_kwargs=True)


def counted(
    edit: Callable[..., torch.Tensor],
    edits: list[NeuronEdit] | list[Steer],
    tracker: PassTracker,
    fired: Counter,
    key: Any,
    applied: Counter,
    rows: dict[Any, int] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``t -> edit(t, edits, ...)`` that counts each call in ``fired[key]``
    (``edit`` is :func:`edit_hidden` or :func:`add_steering`)."""

    def run(t: torch.Tensor) -> torch.Tensor:
        fired[key] += 1
        return edit(t, edits, tracker, applied, rows)

    return run


def install(
    target: Any,
    hidden: dict[int, Callable],
    resid: dict[int, Callable],
) -> list[Any]:
    """Register torch hooks calling ``hidden[layer]`` on MLP activations and ``resid[layer]``
    on decoder-layer outputs; return the handles (the caller removes them)."""
    layers = layer_modules(target)
    down_path = target.model.spec.down_module
    handles: list[Any] = []
    try:
        for layer, fn in hidden.items():
            down = submodule(layers[layer], down_path, "the MLP's output projection")
            handles.append(down.register_forward_pre_hook(_replace_first_arg(fn)))
        for layer, fn in resid.items():
            handles.append(layers[layer].register_forward_hook(_replace_output(fn)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _replace_first_arg(fn: Callable) -> Callable:
    def pre_hook(_module: Any, args: tuple) -> tuple:
        return (fn(args[0]),) + tuple(args[1:])

    return pre_hook


def _replace_output(fn: Callable) -> Callable:
    def hook(_module: Any, _args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):  # older transformers: (hidden_states, ...)
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    return hook
