"""open-unlearning for real: ``register()``, ``ConceptvecEvaluator`` and ``launch()`` against a
checkout of locuslab/open-unlearning, when ``CONCEPTVEC_OPEN_UNLEARNING`` names one.

Skipped otherwise (and when this environment lacks what its ``src/eval.py`` imports; the
skip reason says what). ``benchmarks/open_unlearning_check.sh CHECKOUT`` runs it and records
the result. Each run is a subprocess: their ``src/`` brings top-level modules (``data``,
``model``, ``trainer``, ``evals``) that must not stay in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conceptvec.plugins.open_unlearning import (
    EVALUATOR,
    METRIC,
    checkout_script,
    missing_packages,
)

CHECKOUT = os.environ.get("CONCEPTVEC_OPEN_UNLEARNING")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHECKOUT, reason="set CONCEPTVEC_OPEN_UNLEARNING to a checkout"),
    pytest.mark.skipif(
        bool(CHECKOUT) and bool(missing_packages()),
        reason=f"open-unlearning's eval needs {', '.join(missing_packages())}",
    ),
]
ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_register_puts_the_metric_and_evaluator_in_their_registries(tmp_path):
    src = checkout_script(CHECKOUT).parent
    out = _python(
        f"import sys; sys.path.insert(0, {str(src)!r})\n"
        "from conceptvec.plugins.open_unlearning import register\n"
        "register()\n"
        "from evals import EVALUATOR_REGISTRY\n"
        "from evals.metrics import METRICS_REGISTRY\n"
        "m = METRICS_REGISTRY['conceptvec_intrinsic']\n"
        "print(type(m).__name__, m.name, sorted(EVALUATOR_REGISTRY))\n",
        tmp_path,
    )
    kind, name, evaluators = out.split(" ", 2)
    assert kind == "UnlearningMetric" and name == METRIC and EVALUATOR in evaluators


def test_launch_runs_their_eval_with_our_metric(tiny_dir, tmp_path):
    """A tiny Llama as base; its copy with one down column replaced plays the unlearned
    model. Their src/eval.py, through our launcher and CLI, scores it with the metric."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_dir("llama")
    unlearned = tmp_path / "unlearned"
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        w = model.model.layers[1].mlp.down_proj.weight
        w[:, 5] = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(0))
    model.save_pretrained(unlearned)
    AutoTokenizer.from_pretrained(base).save_pretrained(unlearned)
    concepts = tmp_path / "concepts.json"
    records = [{"Concept": "Five", "Layer": 1, "Dim": 5, "QA": ["q?"]},
               {"Concept": "Nine", "Layer": 2, "Dim": 9, "QA": ["q?"]}]  # fmt: skip
    concepts.write_text(json.dumps(records))
    metric = f"eval.conceptvec.metrics.{METRIC}"
    overrides = [
        "eval=conceptvec",
        "model=Llama-3.2-1B-Instruct",
        f"model.model_args.pretrained_model_name_or_path={unlearned}",
        f"model.tokenizer_args.pretrained_model_name_or_path={unlearned}",
        "model.model_args.device_map=cpu",
        "model.model_args.torch_dtype=float32",
        "model.model_args.attn_implementation=eager",
        f"{metric}.base={base}",
        f"{metric}.concepts={concepts}",
        f"{metric}.qa=false",
        f"{metric}.trace_activations=false",
        f"paths.output_dir={tmp_path / 'saves'}",
        "task_name=conceptvec_test",
    ]
    _python(
        "from conceptvec.cli import main; import sys\n"
        f"sys.argv = ['conceptvec', 'plugins', 'open-unlearning', {CHECKOUT!r}, *{overrides!r}]\n"
        "main()\n",
        tmp_path,
    )
    (result,) = (tmp_path / "saves").rglob("conceptvec_EVAL.json")
    value = json.loads(result.read_text())[METRIC]
    assert value["agg_value"] == pytest.approx(
        (value["value_by_index"]["0"]["change_pct_model"]
         + value["value_by_index"]["1"]["change_pct_model"]) / 2
    )  # fmt: skip
    assert value["value_by_index"]["0"]["concept"] == "Five"
    assert value["value_by_index"]["0"]["change_pct_model"] > 99  # the replaced column
    assert value["value_by_index"]["1"]["change_pct_model"] < 99  # untouched
