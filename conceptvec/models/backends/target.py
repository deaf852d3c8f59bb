"""``resolve``: the model object the user already has, ready to run: its backend and weights.

- a :class:`conceptvec.Model`, or a ``transformers`` causal LM: plain torch hooks;
- a TransformerLens ``TransformerBridge`` (3.x/4.x) or ``HookedTransformer``: its hook points
  (``blocks.L.mlp.hook_post``, ``blocks.L.hook_resid_post``);
- an nnsight ``LanguageModel`` / ``TransformersModel``: edits placed inside its traces;
- anything a user's own :class:`~conceptvec.models.backends.Backend` subclass claims.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from conceptvec.models.model import Model
from conceptvec.types import Tokenizer

from .base import Backend, unwrap
from .hf import HFBackend

if TYPE_CHECKING:
    from .base import Point


@dataclass
class Target:
    """A model ready to run: the user's object, its backend, its torch module, and a
    :class:`Model` over its live weights (spec, dims, tokenizer, weight views)."""

    obj: Any
    backend: Backend
    hf: Any
    """The ``transformers`` module underneath (None for a classic HookedTransformer)."""
    model: Model
    """Reads the live weights in place: weight edits write through its views."""
    rule: Tokenizer | None = None
    """The tokenizer whose defaults set the tokenization rule (None: :attr:`tokenizer`)."""
    _prefix: list[int] | None = field(default=None, repr=False)

    @property
    def prefix(self) -> list[int]:
        """The ids put before every text (the model's BOS, or nothing): what the model's own
        Hugging Face tokenizer adds by default, whatever the wrapper's tokenizer does."""
        if self._prefix is None:
            tok = self.rule if self.rule is not None else self.tokenizer
            self._prefix = bos_prefix(tok) if tok is not None else []
        return self._prefix

    @property
    def add_bos(self) -> bool:
        """True when texts are run with the model's BOS in front (see :attr:`prefix`)."""
        return bool(self.prefix)

    def encode(self, text: str) -> list[int]:
        """Return the ids of ``text`` as the model's own tokenizer makes them by default:
        :attr:`prefix`, then the text's tokens (never a trailing EOS)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.prefix + list(ids)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that goes with the model."""
        return self.model.tokenizer

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where input ids must go)."""
        return self.backend.device

    @property
    def module(self) -> torch.nn.Module:
        """The module whose forward passes the position tracker watches."""
        return self.backend.module

    def point(self, layer: int, kind: Point) -> str:
        """Return the backend's name of ``layer``'s hook point ``kind`` (``mlp``/``resid``)."""
        return self.backend.point(self.model.spec, layer, kind)


def resolve(obj: object, tokenizer: Tokenizer | None = None) -> Target:
    """Return the :class:`Target` for ``obj`` (a Model, alias or path, HF, TL or nnsight model).

    Raises UnsupportedModelError for objects no backend claims (:func:`unwrap`).
    """
    from conceptvec.models.loading import from_object, load

    if isinstance(obj, Target):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        obj = load(obj, quiet=True)
    if isinstance(obj, Model):
        live = load(obj.hf, tokenizer=tokenizer or obj.tokenizer)
        live.name = obj.name
        return Target(obj, HFBackend.open(obj.hf), obj.hf, live)
    backend = unwrap(obj, action="intervene on {}")
    rule = tokenizer if tokenizer is not None else backend.rule_tokenizer(backend.tokenizer)
    model = from_object(obj, tokenizer=tokenizer, changed_ok=True)
    return Target(obj, backend, backend.hf, model, rule)


def bos_prefix(tokenizer: Tokenizer) -> list[int]:
    """Return the ids ``tokenizer`` puts before a text by default (its BOS, or nothing)."""
    probe = "a"
    with_special = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(with_special) - len(plain)
    if n > 0 and with_special[n:] == plain:
        return with_special[:n]
    return []
