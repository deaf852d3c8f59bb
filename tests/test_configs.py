"""Config objects: ``UnlearnConfig``, ``EvalConfig`` and ``FindConfig`` round-trip through
dicts, the verbs take a config or keywords alike, and every output records its config (the
CLI's JSON objects record the command line as ``config``)."""

from __future__ import annotations

import json

import pytest

import conceptvec as cv
from conceptvec.config import EvalConfig, FindConfig, UnlearnConfig
from conceptvec.data import concepts_file
from conceptvec.errors import ConceptvecError, EvaluationError
from conceptvec.evaluate import intrinsic
from tests.conftest import run_cli

SAMPLE = concepts_file("conceptvectors-dev")


def _rome(tmp_path):
    recs = [
        {**r, "Layer": 2, "Dim": 7}
        for r in json.loads(SAMPLE.read_text())
        if r["Concept"] in ("Ancient Rome",)
    ]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(recs))
    return path


@pytest.mark.parametrize("cls", [UnlearnConfig, EvalConfig, FindConfig])
def test_round_trip_and_unknown_settings(cls):
    c = cls()
    d = c.to_dict()
    json.dumps(d, allow_nan=False)
    assert cls.from_dict(d) == c and cls.build(d) == c and cls.build(None) == c
    assert cls.build(c, seed=7).seed == 7 and c.seed == 0  # overrides copy
    with pytest.raises(ConceptvecError, match=f"{cls.__name__} has no setting 'sede'"):
        cls.build(None, sede=1)
    with pytest.raises(ConceptvecError, match="must be a"):
        cls.build(3)  # type: ignore[arg-type]


def test_eval_takes_a_config_or_keywords_and_records_it(tiny_dir, tmp_path):
    tiny, concepts = tiny_dir("llama"), _rome(tmp_path)
    a = intrinsic(tiny, tiny, concepts, EvalConfig(qa=False, trace_activations=False, k=50))
    b = intrinsic(tiny, tiny, concepts, qa=False, trace_activations=False, k=50)
    da, db = a.to_dict(), b.to_dict()
    assert da.pop("timings").keys() == db.pop("timings").keys()  # wall seconds differ per run
    assert da == db
    config = a.to_dict()["settings"]["config"]
    assert config == EvalConfig(qa=False, trace_activations=False, k=50).to_dict()
    assert EvalConfig.from_dict(config).k == 50
    with pytest.raises(EvaluationError, match="no setting 'kk'"):
        intrinsic(tiny, tiny, concepts, kk=3)


def test_find_records_its_config(tiny_dir):
    tiny = tiny_dir("llama")
    r = cv.find_concept(tiny, "Harry Potter", FindConfig(candidates=3), k=5, progress=False)
    assert r.settings["config"] == FindConfig(candidates=3, k=5).to_dict()
    assert len(r.candidates) == 3


def test_cli_json_outputs_record_their_config(tiny_dir, tmp_path, monkeypatch, capsys):
    tiny = tiny_dir("llama")
    code, out, err = run_cli(["search", str(tiny), "the", "--json", "-n", "2"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert len(data["hits"]) == 2 and data["config"]["command"] == "search"
    assert data["config"]["top"] == 2 and data["config"]["word"] == "the"
    args = ["eval", str(tiny), str(tiny), "--concepts", str(_rome(tmp_path)), "--no-qa",
            "--no-trace", "--k", "30", "--json"]  # fmt: skip
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["config"]["command"] == "eval" and data["config"]["k"] == 30
    assert data["settings"]["config"]["k"] == 30 and data["settings"]["config"]["qa"] is False
    args = ["clamp", str(tiny), "L1.3=2", "--prompt", "Rome was", "-n", "2", "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["config"]["command"] == "clamp"


def test_concepts_find_cli_builds_a_find_config(tiny_dir, monkeypatch, capsys):
    args = ["concepts", "find", str(tiny_dir("llama")), "Harry Potter", "--candidates", "2",
            "--modes", "zero", "--k", "4", "--json"]  # fmt: skip
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert (
        data["settings"]["config"]
        == FindConfig(candidates=2, validate=2, modes=["zero"], k=4).to_dict()
    )
    assert data["config"]["command"] == "concepts find" and data["config"]["modes"] == "zero"
    code, _, err = run_cli([*args[:-1], "--modes", "zap"], monkeypatch, capsys)
    assert code == 2 and "unknown knockout mode" in err
