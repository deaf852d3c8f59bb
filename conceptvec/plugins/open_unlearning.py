"""open-unlearning plugin: the ``conceptvec_intrinsic`` metric, its configs and a launcher.

open-unlearning (locuslab/open-unlearning) calls each metric as ``fn(model, **kwargs)``
with the metric's YAML keys, the ``tokenizer`` and the model's ``template_args`` (and
``data``, ``collators``, ``pre_compute`` or ``reference_logs`` when the YAML asks for
them), and keeps the returned ``{"agg_value", "value_by_index"}``. Here:

- :func:`conceptvec_intrinsic` reads ``base`` and ``concepts`` (and the options of
  :func:`conceptvec.evaluate.score`) from its YAML and scores the evaluated model against
  the base: ``agg_value`` is the mean over concepts of the concept vector's change
  percentile among all the model's down columns (0-100; low means unlearning moved the
  concept vector no more than a typical vector);
- :data:`CONFIGS` holds the YAML, laid out as open-unlearning's ``configs/``:
  ``eval/conceptvec.yaml`` (a benchmark of its own, ``eval=conceptvec``) and
  ``eval/{conceptvec,tofu,muse}_metrics/conceptvec_intrinsic.yaml``;
- :func:`launch` runs open-unlearning's ``src/eval.py`` from a user's checkout with the
  metric registered and :data:`CONFIGS` on Hydra's searchpath, editing nothing there.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conceptvec.errors import PluginError
from conceptvec.types import ModelSource

METRIC = "conceptvec_intrinsic"
"""The metric's handler name in open-unlearning's registry and YAML."""
EVALUATOR = "ConceptvecEvaluator"
"""The evaluator handler of ``eval=conceptvec``."""
CONFIGS = Path(__file__).resolve().parent / "open_unlearning_configs"
"""Our config tree, to put on Hydra's searchpath."""
HARNESS_KEYS = frozenset(
    {"handler", "tokenizer", "template_args", "data", "collators", "pre_compute",
     "reference_logs", "batch_size", "generation_args"}
)  # fmt: skip
"""What open-unlearning passes besides the metric's own YAML keys (not ours to read)."""


def options_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the keyword arguments of :func:`conceptvec.evaluate.intrinsic` in ``kwargs``
    (plain values; null means the default), refusing keys that are neither its nor the
    harness's."""
    import inspect

    from conceptvec.evaluate import EvalConfig, intrinsic

    accepted = {
        name
        for name, p in inspect.signature(intrinsic).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    } | set(EvalConfig.field_names())
    unknown = sorted(set(kwargs) - accepted - HARNESS_KEYS - {"base", "concepts"})
    if unknown:
        raise PluginError(
            f"the {METRIC} metric has no option {unknown[0]!r}; its options are "
            f"base, concepts, {', '.join(sorted(accepted))}"
        )
    return {k: _plain(v) for k, v in kwargs.items() if k in accepted and v is not None}


def conceptvec_intrinsic(model: ModelSource, **kwargs: Any) -> dict[str, object]:
    """Return ``{"agg_value", "value_by_index", "conceptvec"}`` for ``model`` (unlearned).

    ``kwargs`` are what open-unlearning's evaluator passes: the metric's YAML keys (``base``
    and ``concepts`` required; any keyword option of :func:`conceptvec.evaluate.intrinsic`,
    such as ``k``, ``recipe``, ``qa``, ``trace_activations``, ``attacks``) and
    ``tokenizer``. ``agg_value`` is the mean change percentile of the concept vectors among
    all down columns (``change_pct_model``, 0-100); ``value_by_index`` has one entry per
    concept, in the file's order, with its cosine, L2, Jaccard, percentiles and label;
    ``conceptvec`` is the full JSON report.
    """
    from conceptvec.evaluate import score
    from conceptvec.models import load

    missing = [k for k in ("base", "concepts") if not kwargs.get(k)]
    if missing:
        raise PluginError(
            f"the {METRIC} metric needs {' and '.join(missing)}: set "
            f"eval.<benchmark>.metrics.{METRIC}.{missing[0]}=... on the command line"
        )
    options = options_of(kwargs)
    unlearned = load(model, tokenizer=kwargs.get("tokenizer"), quiet=True)
    result = score(str(kwargs["base"]), unlearned, _concepts(kwargs["concepts"]), **options)
    by_concept = result["value_by_concept"]
    return {
        "agg_value": float(result["agg_value"]),
        "value_by_index": {
            str(i): {"concept": name, **_plain(values)}
            for i, (name, values) in enumerate(by_concept.items())
        },
        "conceptvec": result["report"],
    }


def _concepts(value: Any) -> Any:
    """Return a concepts file path as a string, or a YAML list of records as plain dicts."""
    return str(value) if isinstance(value, (str, os.PathLike)) else _plain(value)


def _plain(value: Any) -> Any:
    """Return ``value`` with OmegaConf containers (or any mapping/sequence) as dicts/lists."""
    if isinstance(value, Mapping):  # OmegaConf's DictConfig is one
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Sequence):  # and ListConfig
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- launching
def register() -> None:
    """Register :data:`METRIC` and :data:`EVALUATOR` in the open-unlearning that ``import
    evals`` finds (its ``src/`` on ``sys.path``)."""
    try:
        from evals import _register_evaluator
        from evals.base import Evaluator
        from evals.metrics import _register_metric
        from evals.metrics.base import unlearning_metric
    except ImportError as e:
        raise PluginError(
            f"cannot import open-unlearning's evals ({e}); install the checkout's "
            "requirements into this environment (pip install -e CHECKOUT)"
        ) from None

    class ConceptvecEvaluator(Evaluator):
        """The ``eval=conceptvec`` benchmark: its results go to ``conceptvec_EVAL.json``."""

        def __init__(self, eval_cfg: Any, **kwargs: Any) -> None:
            super().__init__("conceptvec", eval_cfg, **kwargs)

    _register_metric(unlearning_metric(name=METRIC)(conceptvec_intrinsic))
    _register_evaluator(ConceptvecEvaluator)


NEEDS: dict[str, str] = {
    "hydra": "hydra-core",
    "hydra_plugins.hydra_colorlog": "hydra-colorlog",  # their configs/hydra/default.yaml uses it
    "deepspeed": "deepspeed",  # src/trainer/unlearn/rmu.py imports it, and eval imports trainer
    "lm_eval": "lm-eval",  # src/evals/lm_eval.py
    "datasets": "datasets",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "rouge_score": "rouge-score",
}
"""Module -> pip name of what open-unlearning's ``src/eval.py`` imports (at commit d3d7cf9)
beyond torch and transformers. Installed without its pins (``transformers==4.45.1``,
``torch==2.4.1``), they run beside conceptvec; see docs/plugins.md."""


def missing_packages() -> list[str]:
    """Return the pip names of :data:`NEEDS` that this environment lacks."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # its parent package (hydra_plugins) is absent
            return True

    return [pip for module, pip in NEEDS.items() if absent(module)]


def checkout_script(checkout: str | os.PathLike[str]) -> Path:
    """Return the ``src/eval.py`` of an open-unlearning checkout, or raise naming what is
    missing."""
    root = Path(checkout).expanduser().resolve()
    script = root / "src" / "eval.py"
    for need in (script, root / "configs" / "eval.yaml", root / "src" / "evals" / "metrics"):
        if not need.exists():
            raise PluginError(
                f"{root} is not an open-unlearning checkout ({need.relative_to(root)} is "
                "missing); pass the folder of `git clone` locuslab/open-unlearning"
            )
    return script


_VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
)  # fmt: skip
"""Hydra's command-line flags that take a value (``--info``'s is optional)."""
_INFO_VALUES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})


def hydra_args(root: Path, args: Sequence[str]) -> list[str]:
    """Return Hydra's command line: the flags in ``args`` (``--cfg job``), then its
    overrides, our searchpath and the checkout as ``paths.root_dir`` (Hydra's parser takes
    no flag after the first override)."""
    flags: list[str] = []
    overrides: list[str] = []
    rest = list(args)
    while rest:
        a = rest.pop(0)
        if not a.startswith("-"):
            overrides.append(a)
            continue
        flags.append(a)
        takes = a in _VALUE_FLAGS and rest and not rest[0].startswith("-")
        if takes and (a not in ("--info", "-i") or rest[0] in _INFO_VALUES):
            flags.append(rest.pop(0))
    if any(a.lstrip("+~").startswith("hydra.searchpath") for a in overrides):
        raise PluginError(
            "the launcher sets hydra.searchpath itself (to conceptvec's configs); drop yours"
        )
    if not any(a.lstrip("+~").startswith("paths.root_dir") for a in overrides):
        overrides.append(f"paths.root_dir={_quoted(str(root))}")  # outputs in its saves/
    return [*flags, *overrides, f"hydra.searchpath=[{_quoted('file://' + str(CONFIGS))}]"]


def _quoted(text: str) -> str:
    """Return ``text`` as a quoted string of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def launch(checkout: str | os.PathLike[str], overrides: Sequence[str] = ()) -> None:
    """Run open-unlearning's eval from ``checkout`` with ``overrides`` (Hydra syntax), the
    metric registered and our configs on the searchpath; nothing in the checkout changes.

    Example overrides: ``eval=conceptvec model=Llama-3.2-1B-Instruct
    model.model_args.pretrained_model_name_or_path=UNLEARNED
    eval.conceptvec.metrics.conceptvec_intrinsic.base=BASE
    eval.conceptvec.metrics.conceptvec_intrinsic.concepts=concepts.json task_name=cv``.
    """
    script = checkout_script(checkout)
    missing = missing_packages()
    if missing:
        raise PluginError(
            f"open-unlearning's eval needs {', '.join(missing)}, not installed here: pip "
            f"install {' '.join(missing)} (not `pip install -e` of the checkout, whose pins "
            "downgrade transformers and torch; see docs/plugins.md)"
        )
    root = script.parent.parent
    args = hydra_args(root, overrides)
    src = str(script.parent)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.path.insert(0, src)
    try:
        register()
        sys.argv = [str(script), *args]
        runpy.run_path(str(script), run_name="__main__")
    except ModuleNotFoundError as e:  # something newer than NEEDS
        raise PluginError(
            f"open-unlearning's eval imports {e.name}, which is not installed here: pip "
            f"install {e.name}"
        ) from None
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
