"""Which backend runs an intervention: the model object the user already has decides.

- a :class:`conceptvec.Model`, or a ``transformers`` causal LM: plain torch hooks;
- a TransformerLens ``TransformerBridge`` (3.x/4.x) or ``HookedTransformer``: its hook points
  (``blocks.L.mlp.hook_post``, ``blocks.L.hook_resid_post``);
- an nnsight ``LanguageModel`` / ``TransformersModel``: edits placed inside its traces.

Objects are recognised by their class's module name, so neither TransformerLens nor nnsight
is imported unless the user's model is one of theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

from conceptvec.errors import UnsupportedModelError
from conceptvec.models import Model, load
from conceptvec.models.hooked import is_hooked_transformer

Backend = Literal["hf", "transformer_lens", "nnsight"]


@dataclass
class Target:
    """A model ready for interventions: the user's object, its backend, its torch module,
    and a :class:`Model` over its live weights (spec, dims, tokenizer, weight views)."""

    obj: Any
    backend: Backend
    hf: Any
    """The ``transformers`` module underneath (None for a classic HookedTransformer)."""
    model: Model
    """Reads the live weights in place: weight edits write through its views."""

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that goes with the model."""
        return self.model.tokenizer

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where input ids must go)."""
        module = self.hf if self.hf is not None else self.obj
        return next(module.parameters()).device

    @property
    def module(self) -> torch.nn.Module:
        """The module whose forward passes the position tracker watches."""
        if self.hf is not None:
            return self.hf
        return self.obj.embed  # HookedTransformer: its embedding receives the token ids


def resolve(obj: Any, tokenizer: Any = None) -> Target:
    """Return the :class:`Target` for ``obj`` (a Model, alias or path, HF, TL or nnsight model).

    Raises UnsupportedModelError for objects that are none of these.
    """
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        obj = load(obj, quiet=True)
    if isinstance(obj, Model):
        live = load(obj.hf, tokenizer=tokenizer or obj.tokenizer)
        live.name = obj.name
        return Target(obj, "hf", obj.hf, live)
    module = type(obj).__module__ or ""
    if is_hooked_transformer(obj):
        return Target(obj, "transformer_lens", None, load(obj, tokenizer=tokenizer))
    if module.startswith("transformer_lens"):
        hf = obj.__dict__.get("original_model")
        if hf is None or not hasattr(obj, "hooks"):
            raise UnsupportedModelError(
                f"cannot intervene on a TransformerLens {type(obj).__name__}: pass a "
                "TransformerBridge or a HookedTransformer"
            )
        return Target(obj, "transformer_lens", hf, load(obj, tokenizer=tokenizer))
    if module.startswith("nnsight"):
        hf = obj.__dict__.get("_module") or obj.__dict__.get("_model")
        if hf is None or not hasattr(obj, "trace"):
            raise UnsupportedModelError(
                f"cannot intervene on an nnsight {type(obj).__name__}: pass a LanguageModel "
                "or TransformersModel wrapping a transformers causal LM"
            )
        return Target(obj, "nnsight", hf, load(obj, tokenizer=tokenizer))
    if isinstance(obj, torch.nn.Module) and hasattr(obj, "config"):
        return Target(obj, "hf", obj, load(obj, tokenizer=tokenizer))
    raise UnsupportedModelError(
        f"cannot intervene on a {type(obj).__name__}: pass a conceptvec Model (or an alias), "
        "a transformers causal LM, a TransformerLens TransformerBridge or HookedTransformer, "
        "or an nnsight LanguageModel"
    )
