"""Live model backends: one :class:`Backend` protocol, one implementation per library.

- :class:`HFBackend` (:mod:`.hf`): a ``transformers`` causal LM, or a :class:`conceptvec.Model`'s
  module, run with plain torch hooks;
- :class:`HookedTransformerBackend` and :class:`BridgeBackend` (:mod:`.transformer_lens`):
  TransformerLens hook points (its weights are read by :mod:`.hooked`);
- :class:`NNsightBackend` (:mod:`.nnsight`): functions placed inside an nnsight trace.

:func:`resolve` turns whatever the user passed into a :class:`Target`; :func:`unwrap` finds
the backend of a live object by asking every :class:`Backend` subclass, so a user adds one by
subclassing. Everything that depends on which library built the model lives here.
"""

from .base import Backend, Fn, Place, Point, backends, unwrap
from .hf import HFBackend
from .nnsight import NNsightBackend
from .target import Target, resolve
from .transformer_lens import BridgeBackend, HookedTransformerBackend, is_hooked_transformer

__all__ = [
    "Backend",
    "BridgeBackend",
    "Fn",
    "HFBackend",
    "HookedTransformerBackend",
    "NNsightBackend",
    "Place",
    "Point",
    "Target",
    "backends",
    "is_hooked_transformer",
    "resolve",
    "unwrap",
]
