"""Plugins that put conceptvec's evaluation into other harnesses.

- :func:`export_lm_eval` writes a concept's forget QA, unrelated QA and text completion
  as lm-evaluation-harness tasks (``lm_eval --include_path DIR``), with the prompts and
  reference answers of conceptvec's own QA evaluation (``conceptvec plugins lm-eval``);
- :mod:`conceptvec.plugins.open_unlearning` is a metric for open-unlearning
  (``conceptvec_intrinsic``) with its Hydra configs and a launcher
  (``conceptvec plugins open-unlearning``);
- any other harness (TOFU, MUSE or RWKU loops) calls :func:`conceptvec.evaluate.score`.

Importing this package imports neither lm-eval nor Hydra (the ``plugins`` extra).
"""

from __future__ import annotations

from conceptvec.errors import PluginError

from .lm_eval_export import LmEvalExport, export_lm_eval

__all__ = ["LmEvalExport", "PluginError", "export_lm_eval"]
