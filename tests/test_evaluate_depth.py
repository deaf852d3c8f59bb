"""The ``patch`` attack and the depth profile on tiny random Llamas: the base's activations
patched back per position recover what a disconnected vector lost, and the profile says
at which layer the path to the answer was cut."""

from __future__ import annotations

import json

import pytest

from conceptvec.evaluate import intrinsic

from .test_evaluate import _records, _variant

UP = "model.layers.{}.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("llama")


@pytest.fixture(scope="module")
def disconnected(tiny, tmp_path_factory):
    """L1.7 fires 400 times as hard (its up row scaled): its down column is untouched."""

    def edit(sd):
        sd[UP.format(1)][7] *= 400

    return _variant(tiny, tmp_path_factory.mktemp("depth") / "disconnected", edit)


def test_patch_recovers_a_disconnected_vector_and_profiles_depth(tiny, disconnected, tmp_path):
    r = intrinsic(
        tiny, disconnected, _records({"Ancient Rome": (1, 7)}), attacks=("patch",),
        controls=2, max_questions=6, max_new_tokens=4,
    )  # fmt: skip
    c = r.runs[0].concepts[0]
    assert c.drop("forget") > 0.05
    p = next(x for x in c.recovery if x.attack == "patch")
    assert p.recovered == pytest.approx(1.0, abs=1e-4)
    assert len(p.control_recovered) == 10  # at least 10 controls, whatever --controls says
    assert p.percentile == 100.0 and max(p.control_recovered) < 0.5
    prof = p.profile
    assert prof is not None and prof["layers"] == [0, 1, 2]
    # below the cut nothing comes back; from the cut's layer on, everything does
    assert prof["mlp"][0] == pytest.approx(0.0, abs=1e-4)
    assert prof["resid"][0] == pytest.approx(0.0, abs=1e-4)
    assert prof["mlp"][1] == pytest.approx(1.0, abs=1e-4)
    assert prof["resid"][1] == pytest.approx(1.0, abs=1e-4)
    assert prof["resid"][2] == pytest.approx(1.0, abs=1e-4)
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["runs"][0]["concepts"][0]["recovery"][0]["profile"]["layers"] == [0, 1, 2]
    assert d["settings"]["patch"] == {"controls": 10, "layers": "all"}
    dep = c.metrics["depth"]
    assert dep["score"] == pytest.approx(0.0, abs=1e-4) and dep["label"] == "shallow"
    assert dep["recovered_patch"] == pytest.approx(1.0, abs=1e-4)
    # the depth profile is plotted, axes titled, in report.plot() and in the HTML page
    from conceptvec.viz.evaluation import depth_figure

    fig = depth_figure(r)
    assert fig.layout.xaxis.title.text == "layer" and "recovered" in fig.layout.yaxis.title.text
    assert [len(t.x) for t in fig.data] == [3, 3]
    assert any("path to the answer" in a.text for a in r.plot().layout.annotations)
    r.write_html(tmp_path / "r.html")
    assert "Where was the path to the answer cut?" in (tmp_path / "r.html").read_text()


def test_patch_on_an_untouched_model_claims_nothing(tiny):
    r = intrinsic(
        tiny, tiny, _records({"Ancient Rome": (1, 7)}), attacks=("patch",),
        controls=2, max_questions=2, max_new_tokens=2, options={"patch": {"layers": [2]}},
    )  # fmt: skip
    p = r.runs[0].concepts[0].recovery[0]
    assert p.recovered is None and p.percentile is None
    assert "unchanged by unlearning" in p.detail
    assert p.profile is not None and p.profile["layers"] == [2]
    assert p.profile["resid"] == [None]
    dep = r.runs[0].concepts[0].metrics["depth"]
    assert dep["label"] == "unchanged" and dep["score"] is None
    # an untouched vector has no change percentile (not "50th by ties")
    assert dep["change_pct_model"] is None and "did not change" in dep["why"]


def test_patch_batches_one_pass_per_variant(tiny, disconnected, monkeypatch):
    import conceptvec.evaluate.patching as patching

    calls = []
    real = patching.score_many

    def counting(target, ids, spans, variants):
        calls.append((ids.shape[0], len(variants)))
        return real(target, ids, spans, variants)

    monkeypatch.setattr(patching, "score_many", counting)
    intrinsic(
        tiny, disconnected, _records({"Ancient Rome": (1, 7)}), attacks=("patch",),
        max_questions=3, max_new_tokens=2, qa=True, trace_activations=False,
    )  # fmt: skip
    # the base once, then every variant (plain, vector, 10 controls, 3 MLP, 3 residual)
    # in one call over all 3 forget sequences
    assert calls == [(3, 1), (3, 1 + 1 + 10 + 3 + 3)]


def test_patch_layers_out_of_range_is_one_line(tiny, disconnected):
    from conceptvec.errors import EvaluationError

    with pytest.raises(EvaluationError, match="are not layers of"):
        intrinsic(
            tiny, disconnected, _records({"Ancient Rome": (1, 7)}), attacks=("patch",),
            max_questions=1, max_new_tokens=1, trace_activations=False,
            options={"patch": {"layers": [5]}},
        )  # fmt: skip


def test_depth_without_patch_is_not_measured_and_a_zero_vector_has_no_cosine(tiny, tmp_path):
    def zero(sd):
        sd["model.layers.1.mlp.down_proj.weight"][:, 7] = 0

    unl = _variant(tiny, tmp_path / "zero", zero)
    r = intrinsic(tiny, unl, _records({"Ancient Rome": (1, 7)}), qa=False)
    dep = r.runs[0].concepts[0].metrics["depth"]
    assert dep["label"] == "not measured" and dep["score"] is None
    assert "did not run" in dep["why"]
    assert dep["cosine"] is None and "zero after" in dep["why"]
    assert dep["change_pct_model"] is not None


def test_collateral_measures_the_files_other_validated_vectors(tiny, tmp_path):
    def move(sd):  # Rome's vector reversed, Italy's nudged, Poland's untouched
        w = sd["model.layers.2.mlp.down_proj.weight"]
        w[:, 7] = -w[:, 7]
        sd["model.layers.1.mlp.down_proj.weight"][:, 3] *= 1.5

    unl = _variant(tiny, tmp_path / "moved", move)
    recs = _records({"Ancient Rome": (2, 7), "Italy": (1, 3), "Poland": (0, 5), "Baseball": (0, 9)})
    for rec in recs:
        if rec["Concept"] == "Baseball":
            rec["verdict"] = "category"  # not a validated concept vector: left out
    r = intrinsic(tiny, unl, recs, names=["Ancient Rome"], qa=False, trace_activations=False)
    run = r.runs[0]
    assert [c.concept for c in run.concepts] == ["Ancient Rome"]
    assert [v.concept for v in run.weights.concepts] == ["Ancient Rome"]
    by = {v.concept: v for v in run.collateral}
    assert set(by) == {"Italy", "Poland"}
    assert by["Italy"].rel_change == pytest.approx(0.5) and by["Italy"].cosine == pytest.approx(1)
    assert by["Poland"].l2 == 0.0
    d = r.to_dict()["runs"][0]
    assert sorted(v["concept"] for v in d["collateral"]) == ["Italy", "Poland"]
    text = str(r)
    assert "the file's other concept vectors: " in text and "Italy L1.3: cosine" in text
