"""Registries: a method and an attack registered from *outside* the package run through
``conceptvec unlearn`` and ``conceptvec eval`` (``--plugin``) and show in the report; unknown
names fail in one line before any work; entry points and ``.py`` plugin files load."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conceptvec.data import concepts_file
from conceptvec.errors import EvaluationError
from conceptvec.errors import PluginImportError as PluginError
from conceptvec.evaluate import ATTACKS, METRICS, register_attack
from conceptvec.registry import Registry, load_entry_points, load_plugins
from conceptvec.unlearning import METHODS, UnlearningError
from tests.conftest import run_cli

SAMPLE = concepts_file("conceptvectors-dev")
FAST = ["--steps", "2", "--batch-size", "2", "--max-length", "32", "--no-eval"]

PLUGIN = '''
import torch

from conceptvec.evaluate import register_attack, register_metric
from conceptvec.unlearning import mean_nll, register_method


@register_method("half-ga", paper="a test plugin", defaults={"scale": 0.5})
def half_ga(ctx, batches):
    """Gradient ascent at a fraction of its strength."""
    forget = -mean_nll(ctx.model, batches["forget"]).mean()
    return {"loss": ctx.hparams["scale"] * forget, "forget": forget.detach()}


@register_metric("norm_ratio")
def norm_ratio(inp):
    """The vector's change relative to its base norm, from the report's own numbers."""
    return inp.result.vector.l2 / inp.result.vector.base_norm


@register_attack("noise", settings=lambda config: {"sigma": 1e-3})
def noise(inp):
    """Small Gaussian noise on every weight of the unlearned model, then the forget QA."""
    params = list(inp.unlearned.hf.parameters())
    saved = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(inp.config.seed)
    try:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        return inp.score(inp.unlearned, "noise", "N(0, 1e-3) on every weight")
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module ``cv_test_plugin`` in tmp_path, importable; unregistered after."""
    folder = tmp_path / "plug"
    folder.mkdir()
    (folder / "cv_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    yield "cv_test_plugin"
    for registry, name in ((METHODS, "half-ga"), (ATTACKS, "noise"), (METRICS, "norm_ratio")):
        if name in registry:
            registry.remove(name)
    sys.modules.pop("cv_test_plugin", None)


def _concepts(tmp_path: Path) -> Path:
    recs = [
        {**r, "Layer": 2, "Dim": 7}
        for r in json.loads(SAMPLE.read_text())
        if r["Concept"] == "Ancient Rome"
    ]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(recs))
    return path


def test_outside_method_and_attack_run_through_the_cli(
    plugin, tiny_dir, tmp_path, monkeypatch, capsys
):
    tiny, out = tiny_dir("llama"), tmp_path / "half"
    assert "half-ga" not in METHODS  # nothing registered until the plugin is imported
    args = ["unlearn", str(tiny), "--concept", "Ancient Rome", "--concepts", str(SAMPLE),
            "--method", "half-ga", "--set", "scale=0.25", "--out", str(out), *FAST]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "unknown method 'half-ga'" in err and "gd" in err
    assert not out.exists()
    code, stdout, err = run_cli([*args, "--plugin", plugin, "--json"], monkeypatch, capsys)
    assert code == 0, err
    record = json.loads(stdout)
    assert record["method"] == "half-ga" and record["paper"] == "a test plugin"
    assert record["hyperparameters"] == {"scale": 0.25} and record["steps_done"] == 2
    assert record["config"]["method"] == "half-ga" and record["config"]["hparams"] == {
        "scale": 0.25
    }
    assert json.loads((out / "unlearning.json").read_text())["method"] == "half-ga"

    report = tmp_path / "r.json"
    args = ["eval", str(tiny), str(out), "--concepts", str(_concepts(tmp_path)), "--no-trace",
            "--attacks", "noise,quant4", "--max-questions", "2", "--max-new-tokens", "2",
            "--metrics", "norm_ratio,cosine",
            "--plugin", plugin, "--out", str(report)]  # fmt: skip
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(report.read_text())
    run = data["runs"][0]
    assert run["record"]["method"] == "half-ga"
    attacks = [r["attack"] for r in run["concepts"][0]["recovery"]]
    assert attacks == ["noise", "quant4"]
    noise = run["concepts"][0]["recovery"][0]
    assert noise["detail"] == "N(0, 1e-3) on every weight" and noise["logprob"] < 0
    assert data["settings"]["noise"] == {"sigma": 1e-3}
    assert data["settings"]["config"]["attacks"] == ["noise", "quant4"]
    assert "recovered noise" in stdout
    metrics = run["concepts"][0]["metrics"]
    vector = run["concepts"][0]["vector"]
    assert metrics["norm_ratio"] == pytest.approx(vector["l2"] / vector["base_norm"])
    assert metrics["cosine"] == vector["cosine"]
    assert data["settings"]["config"]["metrics"] == ["norm_ratio", "cosine"]


def test_unknown_attack_fails_before_any_work(tiny_dir, tmp_path, monkeypatch, capsys):
    tiny = tiny_dir("llama")
    base = ["eval", str(tiny), str(tiny), "--concepts", str(_concepts(tmp_path))]
    for extra in (["--attacks", "quant8", "--no-qa"], ["--attacks", "recovery,quant8"]):
        code, _, err = run_cli([*base, *extra], monkeypatch, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "unknown attack 'quant8'; use one of recovery, quant4, relearn" in err
    code, _, err = run_cli([*base, "--attacks", "quant4", "--no-qa"], monkeypatch, capsys)
    assert code == 2 and "drop --attacks or --no-qa" in err
    code, _, err = run_cli([*base, "--no-qa", "--metrics", "nope"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown metric 'nope'; use one of cosine" in err
    code, _, err = run_cli([*base, "--plugin", "no_such_cv_module"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "no_such_cv_module" in err


def test_registry_rules():
    r: Registry[int] = Registry("thing", EvaluationError)
    r.add("one", 1)
    assert r["one"] == 1 and "one" in r and list(r) == ["one"] and len(r) == 1
    r.add("one", 1)  # the same object again: fine (a module imported twice)
    with pytest.raises(EvaluationError, match="already registered"):
        r.add("one", 2)
    r.add("one", 2, replace=True)
    with pytest.raises(EvaluationError, match="unknown thing 'two'; use one of one"):
        r["two"]
    with pytest.raises(EvaluationError, match="non-empty word"):
        r.add("a,b", 3)
    with pytest.raises(UnlearningError, match="unknown method"):
        METHODS.check(["gd", "nope"])


def test_plugin_file_and_entry_point(tmp_path, monkeypatch):
    f = tmp_path / "cv_file_plugin.py"
    f.write_text(
        textwrap.dedent("""
        from conceptvec.evaluate import register_attack

        @register_attack("from-file")
        def from_file(inp):
            return []
    """)
    )
    try:
        assert load_plugins([str(f)]) == [str(f)] and "from-file" in ATTACKS
        load_plugins([str(f)])  # a second import of the same file registers nothing new
    finally:
        ATTACKS.remove("from-file")
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins([str(tmp_path / "missing.py")])
    # an installed distribution (a .dist-info on sys.path) declaring a conceptvec.plugins entry
    dist = tmp_path / "cvplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cvplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[conceptvec.plugins]\nmine = cv_ep_plugin\n")
    (tmp_path / "cv_ep_plugin.py").write_text(
        "from conceptvec.evaluate import register_attack\n"
        "register_attack('from-entry-point')(lambda inp: [])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "cv_ep_plugin" in load_entry_points(again=True)
        assert "from-entry-point" in ATTACKS
    finally:
        ATTACKS.remove("from-entry-point")
        sys.modules.pop("cv_ep_plugin", None)


def test_register_attack_result_is_checked():
    from conceptvec.evaluate.attacks import run_attack

    register_attack("bad")(lambda inp: ["not a recovery"])
    try:
        with pytest.raises(EvaluationError, match="returned a str"):
            run_attack("bad", None)  # type: ignore[arg-type]
    finally:
        ATTACKS.remove("bad")
