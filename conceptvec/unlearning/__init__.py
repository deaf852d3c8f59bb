"""Unlearning methods that produce checkpoints to evaluate.

- :func:`unlearn` trains (or edits) a model to forget a concept and writes an HF
  checkpoint with ``unlearning.json`` (an :class:`UnlearnResult`);
- :data:`METHODS`: ``ga``, ``gd``, ``npo``, ``npo-gd``, ``npo-kl``, ``simnpo``, ``dpo``,
  ``rmu``, ``needle``, ``edit``, each a loss in :mod:`.methods` citing its paper, and any
  method added with :func:`register_method` (a loss over a :class:`Context`);
- :class:`UnlearningError` is what a run that cannot start or finish raises.
"""

from conceptvec.checkpoint_record import UnlearningRecord
from conceptvec.config import UnlearnConfig
from conceptvec.errors import UnlearningError

from .api import UnlearnResult, unlearn
from .methods import METHODS, Context, Method, mean_nll, register_method

__all__ = [
    "METHODS",
    "Context",
    "Method",
    "UnlearnConfig",
    "UnlearnResult",
    "UnlearningRecord",
    "UnlearningError",
    "mean_nll",
    "register_method",
    "unlearn",
]
