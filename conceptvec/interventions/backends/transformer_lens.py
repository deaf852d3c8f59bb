"""The TransformerLens backend: the same edits on TransformerLens hook points.

``blocks.L.mlp.hook_post`` is the MLP hidden activation (``act(gate) * up``) and
``blocks.L.hook_resid_post`` the residual stream after block L, in both the classic
``HookedTransformer`` and the 3.x/4.x ``TransformerBridge`` (where they are aliases of
``blocks.L.mlp.out.hook_in`` and ``blocks.L.hook_out``). Hooks are added with the model's
own ``hooks()`` context manager, which removes them on exit. TransformerLens is never
imported here: the model object brings its own methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def hidden_hook_name(layer: int) -> str:
    """Return the TransformerLens name of ``layer``'s MLP hidden activation."""
    return f"blocks.{layer}.mlp.hook_post"


def resid_hook_name(layer: int) -> str:
    """Return the TransformerLens name of the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def hooks(target: Any, hidden: dict[int, Callable], resid: dict[int, Callable]) -> Any:
    """Return the model's ``hooks(...)`` context manager with our functions on its points."""
    fwd = [(hidden_hook_name(layer), _point_fn(fn)) for layer, fn in hidden.items()]
    fwd += [(resid_hook_name(layer), _point_fn(fn)) for layer, fn in resid.items()]
    return target.obj.hooks(fwd_hooks=fwd)


def _point_fn(fn: Callable) -> Callable:
    def hook_fn(activation: Any, hook: Any) -> Any:  # noqa: ARG001 (TL passes hook= by name)
        return fn(activation)

    return hook_fn


def logits(target: Any, ids: Any) -> Any:
    """Return ``[batch, tokens, vocab]`` logits for token ids (no BOS is added)."""
    return target.obj(ids, return_type="logits")


def generate(target: Any, ids: Any, max_new_tokens: int) -> Any:
    """Return greedy continuations ``[batch, new tokens]`` (TransformerLens' ``generate``,
    without its KV cache, which gives wrong tokens for bridged models)."""
    out = target.obj.generate(
        ids,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_past_kv_cache=False,
        verbose=False,
        stop_at_eos=False,
    )
    return out[:, ids.shape[1] :]
