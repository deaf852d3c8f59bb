"""Which backend runs an intervention: the model object the user already has decides.

- a :class:`conceptvec.Model`, or a ``transformers`` causal LM: plain torch hooks;
- a TransformerLens ``TransformerBridge`` (3.x/4.x) or ``HookedTransformer``: its hook points
  (``blocks.L.mlp.hook_post``, ``blocks.L.hook_resid_post``);
- an nnsight ``LanguageModel`` / ``TransformersModel``: edits placed inside its traces.

Objects are taken apart by :func:`conceptvec.models.objects.unwrap`, which recognises them by
their class's module name, so neither TransformerLens nor nnsight is imported unless the
user's model is one of theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from conceptvec.models import Model, load
from conceptvec.models.objects import Backend, unwrap


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

    Raises UnsupportedModelError for objects that are none of these
    (:func:`conceptvec.models.objects.unwrap` takes them apart).
    """
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        obj = load(obj, quiet=True)
    if isinstance(obj, Model):
        live = load(obj.hf, tokenizer=tokenizer or obj.tokenizer)
        live.name = obj.name
        return Target(obj, "hf", obj.hf, live)
    parts = unwrap(obj, action="intervene on {}")
    return Target(obj, parts.backend, parts.hf, load(obj, tokenizer=tokenizer))
