"""benchmarks/meta_eval.py: its statistics, its doc, and (real_model) the 2-checkpoint subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_auc_counts_ties_half_and_needs_both_classes():
    from meta_stats import auc

    assert auc(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == 1.0
    assert auc(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5
    assert auc(np.array([1.0, 2.0]), np.array([1, 1])) is None


def test_bootstrap_is_seeded_and_brackets_the_auc():
    from meta_stats import auc, bootstrap

    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 10)
    scores = labels + rng.normal(0, 0.8, 20)
    lo, hi = bootstrap(scores, labels, seed=3)
    assert (lo, hi) == bootstrap(scores, labels, seed=3)
    assert lo <= auc(scores, labels) <= hi


def test_uds_style_from_the_residual_profile():
    from meta_eval import uds_style

    assert uds_style({"resid": [1.0, 0.5, None, 2.0]}) == pytest.approx(1 - 2.5 / 3)
    assert uds_style({"resid": [None]}) is None and uds_style(None) is None


def test_spearman():
    from meta_stats import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def _cell(method, back, cos, drop):
    return {
        "method": method,
        "truth": {"comes_back": back},
        "measures": {"cosine": cos, "forget_drop": drop, "forget_drop_b": drop, "jaccard": None},
        "robustness": {"quant4": {"cosine": cos, "forget_drop_b": drop},
                       "relearn": {"cosine": cos, "forget_drop_b": -drop}},
    }  # fmt: skip


def test_analyse_grades_by_the_fixed_sign_and_reports_missing_measures_as_not_measured():
    from meta_stats import analyse

    cells = [_cell("ga", True, 1.0, 0.5), _cell("ga", True, 0.99, 0.7),
             _cell("edit", False, 0.0, 1.0), _cell("edit", False, -1.0, 2.0),
             _cell("meta-control", None, 1.0, 0.0)]  # fmt: skip
    a = analyse(cells)
    assert a["graded"] == 4 and a["controls"] == 1 and a["comes_back"] == 2
    assert a["auc"]["cosine"]["auc"] == 1.0  # higher cosine: comes back
    assert a["auc"]["forget_drop"]["auc"] == 1.0  # larger drop: does not (sign -1)
    assert a["auc"]["jaccard"]["status"] == "not measured"
    assert a["auc"]["cosine"]["distinct"] == 4
    assert a["robustness"]["forget_drop"]["relearn"]["spearman"] == pytest.approx(-1.0)


def test_meta_evaluation_md_equals_the_script_output(capsys):
    import meta_eval

    assert meta_eval.main(["--doc", "--check"]) == 0, capsys.readouterr().out


def test_the_grid_has_at_least_30_checkpoints_of_5_methods_and_3_validated_vectors():
    import meta_eval

    cells = meta_eval.grid(subset=False)
    unlearned = [c for c in cells if c["method"] != "meta-control"]
    assert len(unlearned) >= 30 and len({c["method"] for c in unlearned}) >= 5
    assert len({c["concept"] for c in unlearned}) >= 3
    assert {c["concept"] for c in cells if c["method"] == "meta-control"} == {
        c["concept"] for c in unlearned
    }


@pytest.mark.real_model
def test_subset_runs_for_real_and_resumes(tmp_path, capsys):
    import meta_eval

    out = tmp_path / "meta.json"
    # one shard first (the second cell only: no summary), then the whole subset reuses it
    assert meta_eval.main(["--subset", "--work", str(tmp_path), "--shard", "1/2"]) == 0
    assert not out.exists() and len(list((tmp_path / "cells").glob("*.json"))) == 1
    capsys.readouterr()
    assert meta_eval.main(["--subset", "--work", str(tmp_path), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("done before, skipped") == 1
    s = json.loads(out.read_text())
    assert s["kind"] == "subset" and len(s["cells"]) == 2
    for c in s["cells"]:
        assert c["truth"]["halves"] == [1, 2]
        cos = c["measures"]["cosine"]  # null for the zeroed vector (a zero vector has none)
        assert (cos is None and c["method"] == "edit") or -1.0 <= cos <= 1.0
        prof = c["measures"]["uds"]
        assert prof is None or 0.0 <= prof <= 1.0
    edit = next(c for c in s["cells"] if c["method"] == "edit")
    assert edit["measures"]["cosine"] is None or edit["measures"]["cosine"] == 0.0
    assert not (tmp_path / "ckpt" / edit["key"]).exists()  # removed once measured
    assert s["run"]["heldout_precision"] in ("bf16-mixed", "fp32")
    assert set(edit["eval_timings"]) >= {"attack:meta-heldout", "attack:quant4", "attack:patch"}
    assert meta_eval.main(["--subset", "--work", str(tmp_path), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("done before, skipped") == 2
    again = tmp_path / "again.json"  # the cells measured so far, nothing run
    assert meta_eval.main(["--subset", "--work", str(tmp_path), "--out", str(again),
                           "--measured-only"]) == 0  # fmt: skip
    assert json.loads(again.read_text())["cells"] == s["cells"]


def test_reading_is_decided_by_the_numbers():
    from meta_stats import MEASURES, reading

    def summary(depth: float, drop: float, graded: int) -> dict:
        auc = {n: {"status": "not measured", "n": 0} for n in MEASURES}
        auc["depth_score"] = {"status": "measured", "n": graded, "auc": depth, "ci95": (0.8, 1.0)}
        auc["forget_drop"] = {"status": "measured", "n": graded, "auc": drop, "ci95": (0.4, 0.9)}
        a = {
            "checkpoints": graded + 3,
            "controls": 3,
            "graded": graded,
            "comes_back": 9,
            "auc": auc,
        }
        return {"kind": "full grid", "analysis": a}

    good = reading(summary(0.95, 0.6, 36))
    assert "AUC is 0.950 (95% interval 0.800 to 1.000); it reaches the goal of 0.9" in good
    assert "It is above forget log p drop" in good and "intervals are wide" not in good
    assert good.index("depth score 0.950") < good.index("forget log p drop 0.600")
    bad = reading(summary(0.55, 0.7, 12))
    assert "does not reach the goal" in bad and "It is not above forget log p drop" in bad
    assert "No measure predicts recovery better than chance" in bad  # 0.4 to 0.9 reaches 0.5
    assert "best predictor of recovery here is depth score (AUC 0.950)" in good  # 0.8 to 1.0
    assert "Only" not in good  # 9 of 36 came back: enough of each class
    assert "intervals are wide" in bad
    flat = summary(0.5, 0.1, 36)
    flat["analysis"]["auc"]["depth_score"].update(ci95=(0.5, 0.5), distinct=1, constant=1.0)
    flat["analysis"]["auc"]["forget_drop"]["ci95"] = (0.0, 0.3)
    text = reading(flat)
    assert "It is 1 on every graded checkpoint, so it cannot rank them: giving" in text
    assert "reverse the direction fixed in advance for forget log p drop (AUC 0.100)" in text
    assert "reverse" not in good and "cannot rank" not in good
    few = summary(0.6, 0.5, 12)
    few["analysis"]["comes_back"] = 10
    assert "Only 2 of the 12 graded checkpoints did not come back, so every AUC rests on 20" in (
        reading(few)
    )


def test_measured_only_with_nothing_measured_is_one_line(tmp_path, capsys):
    import meta_eval

    out = tmp_path / "m.json"
    assert meta_eval.main(["--work", str(tmp_path), "--measured-only", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: no cell measured yet; run the grid first"
    assert not out.exists()
