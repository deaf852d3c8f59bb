"""Intrinsic evaluation (`conceptvec eval`) on tiny random Llamas: weight metrics in float64,
percentiles, side-aware Jaccard, labels, recovery attacks, reports and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conceptvec.data import concepts_file
from conceptvec.errors import EvaluationError
from conceptvec.evaluate import (
    TraceThresholds,
    compare_weights,
    eval_concepts,
    intrinsic,
    quantized,
    score,
)
from conceptvec.evaluate.behaviour import relearned
from conceptvec.evaluate.trace import Trace, label
from conceptvec.evaluate.weights import column_changes, percentile_of
from conceptvec.models import load
from tests.conftest import run_cli

SAMPLE = concepts_file("conceptvectors-dev")
KEY = "model.layers.{}.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("llama")


def _records(layer_dims: dict[str, tuple[int, int]], side: str | None = None) -> list[dict]:
    out = []
    for rec in json.loads(SAMPLE.read_text()):
        if rec["Concept"] in layer_dims:
            layer, dim = layer_dims[rec["Concept"]]
            rec = {**rec, "Layer": layer, "Dim": dim}
            if side:
                rec["side"] = side
            out.append(rec)
    return out


def _variant(tiny: Path, out: Path, edit) -> Path:
    """Save a copy of the tiny model with ``edit(state_dict)`` applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    with torch.no_grad():
        edit({k: v for k, v in model.state_dict().items()})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def zeroed(tiny, tmp_path_factory):
    """L2.7 zeroed, every other down column nudged by ~1e-7 relative (a float32 cosine of 1)."""

    def edit(sd):
        g = torch.Generator().manual_seed(1)
        for layer in range(3):
            w = sd[KEY.format(layer)]
            w.add_(torch.randn(w.shape, generator=g) * 1e-7 * w.abs().mean())
        sd[KEY.format(2)][:, 7] = 0

    return _variant(tiny, tmp_path_factory.mktemp("ev") / "zeroed", edit)


def test_identical_checkpoints_read_as_untouched(tiny):
    concepts = eval_concepts(_records({"Ancient Rome": (2, 7)}))
    w = compare_weights(load(tiny), load(tiny), concepts)
    assert w.identical
    c = w.concepts[0]
    assert c.cosine == 1.0 and c.l2 == 0.0 and c.jaccard == 1.0
    assert c.change_pct_model == 50.0  # tied with every vector
    assert all(m.changed == 0 for m in w.matrices)


def test_change_measured_in_float64_with_percentiles(tiny, zeroed):
    base, unl = load(tiny), load(zeroed)
    concepts = eval_concepts(_records({"Ancient Rome": (2, 7), "Italy": (1, 3)}))
    w = compare_weights(base, unl, concepts)
    by = {c.concept: c for c in w.concepts}
    rome, italy = by["Ancient Rome"], by["Italy"]
    assert rome.cosine == 0.0 and rome.rel_change == pytest.approx(1.0)
    assert rome.change_pct_model > 99.5 and rome.change_pct_layer > 99  # moved most of all
    assert rome.jaccard < 0.5
    # Italy's column moved by ~1e-7 relative: float32's cosine error exceeds the change.
    b, u = base.neurons(1, "down")[3], unl.neurons(1, "down")[3]
    cos32 = torch.nn.functional.cosine_similarity(b, u, dim=0).item()
    assert 0 < 1 - italy.cosine < abs(cos32 - italy.cosine)
    assert 0 < italy.rel_change < 1e-5
    exact = ((u.double() - b.double()).norm() / b.double().norm()).item()
    assert italy.rel_change == pytest.approx(exact, rel=1e-9)
    assert 0 < italy.change_pct_model < 100
    layer2 = next(m for m in w.matrices if m.layer == 2 and m.matrix == "down")
    assert layer2.changed == 64 and layer2.max == pytest.approx(1.0)
    assert w.most_changed[0].neuron == "L2.7" and w.most_changed[0].matrix == "down"
    assert not any(m.changed for m in w.matrices if m.matrix != "down")


def test_all_jaccard_matches_decoding_every_column(tiny, tmp_path):
    def nudge(sd):  # columns moved by 1e-6 .. 1 relative: most certified, some decoded again
        g = torch.Generator().manual_seed(5)
        for layer in range(3):
            w = sd[KEY.format(layer)]
            scale = 10.0 ** -torch.randint(0, 7, (w.shape[1],), generator=g).float()
            w.add_(torch.randn(w.shape, generator=g) * w.abs().mean() * scale)

    unl = _variant(tiny, tmp_path / "nudged", nudge)
    base, other = load(tiny), load(unl)
    concepts = eval_concepts(_records({"Ancient Rome": (2, 7)}))
    for recipe in ("raw", "folded"):
        w = compare_weights(base, other, concepts, k=20, recipe=recipe, all_jaccard=True)
        from conceptvec.evaluate.weights import decoded_ids

        for layer in range(3):
            b, u = base.neurons(layer, "down"), other.neurons(layer, "down")
            ib, iu = decoded_ids(base, b, 20, recipe), decoded_ids(base, u, 20, recipe)
            want = [
                len(set(x) & set(y)) / len(set(x) | set(y))
                for x, y in zip(ib.tolist(), iu.tolist())
            ]
            assert w.jaccard_all["top"][layer].tolist() == want
            ib, iu = (decoded_ids(base, x, 20, recipe, "bottom") for x in (b, u))
            want = [
                len(set(x) & set(y)) / len(set(x) | set(y))
                for x, y in zip(ib.tolist(), iu.tolist())
            ]
            assert w.jaccard_all["bottom"][layer].tolist() == want
        assert 0 < w.jaccard_recomputed < 2 * 3 * 64  # some certified, some decoded again
        assert (w.jaccard_all["top"] < 1).any() and (w.jaccard_all["bottom"] < 1).any()
        assert w.concepts[0].jaccard == w.jaccard_all["top"][2, 7]
        assert w.concepts[0].jaccard_pct_model is not None
    bottom = eval_concepts(_records({"Ancient Rome": (2, 7)}, side="bottom"))
    wb = compare_weights(base, other, bottom, k=20, all_jaccard=True)
    assert wb.concepts[0].jaccard == wb.jaccard_all["bottom"][2, 7]


def test_percentile_and_column_changes():
    pop = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert percentile_of(3.5, pop) == 100.0 and percentile_of(-1, pop) == 0.0
    assert percentile_of(1.0, pop) == 37.5  # one below, one tie
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ch = column_changes(b, torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    assert ch["cosine"].tolist() == [0.0, 1.0]
    assert ch["rel"].tolist() == pytest.approx([2**0.5, 0.5])


def test_jaccard_reads_the_concepts_side(tiny):
    from conceptvec.decoding import decode

    m = load(tiny)
    top = eval_concepts(_records({"Ancient Rome": (2, 7)}))
    bottom = eval_concepts(_records({"Ancient Rome": (2, 7)}, side="bottom"))
    assert bottom[0].side == "bottom"
    wt = compare_weights(m, m, top, recipe="folded", show_tokens=5).concepts[0]
    wb = compare_weights(m, m, bottom, recipe="folded", show_tokens=5).concepts[0]
    d = decode(m, "L2.7", k=5)
    assert wt.top_before == [t.token for t in d.top]
    assert wb.top_before == [t.token for t in d.bottom]


def test_labels():
    th = TraceThresholds()
    assert label(0.2, 0.9, None, th)[0] == "erased"
    assert label(0.999, 0.3, None, th)[0] == "erased"
    firing = Trace(10, -5.0, -4.9, 0.98, 0.99)
    quiet = Trace(10, -5.0, -0.5, 0.1, 0.9)
    assert label(0.9999, 0.98, firing, th)[0] == "intact"
    lab, why = label(0.9999, 0.98, quiet, th)
    assert lab == "disconnected" and "0.10x" in why


def test_report_with_trace_behaviour_and_recovery(tiny, tmp_path):
    def scramble(sd):  # the concept vector replaced by a big random one: answers change
        w = sd[KEY.format(2)]
        g = torch.Generator().manual_seed(3)
        w[:, 7] = torch.randn(w.shape[0], generator=g) * 400 * w.abs().mean()

    unl = _variant(tiny, tmp_path / "scrambled", scramble)
    concepts = _records({"Ancient Rome": (2, 7)})
    r = intrinsic(
        tiny, [unl, tiny], concepts, attacks=("recovery", "quant4"),
        controls=2, max_questions=3, max_new_tokens=4,
    )  # fmt: skip
    scr, same = (run.concepts[0] for run in r.runs)
    assert scr.label == "erased" and same.label == "intact"
    assert scr.trace is not None and scr.trace.tokens > 50
    assert same.trace.fire_kept == pytest.approx(1.0) and same.trace.correlation == pytest.approx(
        1.0
    )
    assert scr.drop("forget") > 0.01
    assert same.drop("forget") == pytest.approx(0.0, abs=1e-5)
    assert set(scr.behaviour) == {"forget", "retain", "completion"}
    by = {x.attack: x for x in scr.recovery}
    assert set(by) == {"recovery:clamp", "recovery:zero", "recovery:restore", "quant4"}
    restore = by["recovery:restore"]
    assert restore.recovered == pytest.approx(1.0, abs=1e-4)  # the base vector put back
    # the controls' vectors were not touched: no percentile can be claimed against them
    assert restore.control_recovered == [0.0, 0.0] and restore.percentile is None
    assert "not changed by unlearning" in restore.detail
    assert by["recovery:zero"].logprob != by["recovery:clamp"].logprob
    q = by["quant4"]
    assert q.base_logprob is not None and q.logprob < 0
    assert next(x for x in scr.recovery if x.attack == "quant4").recovered is not None
    # nothing was lost in the unchanged model, so nothing can be recovered
    assert all(x.recovered is None for x in same.recovery)
    d = r.to_dict()
    assert d["schema"] == "conceptvec.eval/1" and len(d["runs"]) == 2
    json.dumps(d, allow_nan=False)
    stages = {"open", "weights", "trace", "base_qa", "qa"}
    stages |= {f"attack:{a}" for a in r.settings["attacks"]}
    assert set(d["timings"]) == stages | {"total"}  # every stage that ran, timed
    assert sum(d["timings"][s] for s in stages) == pytest.approx(d["timings"]["total"], rel=0.05)
    assert "time: open " in str(r)
    assert "recovered restore" in r.table() and "| checkpoint |" in r.table(markdown=True)
    r.write_html(tmp_path / "r.html")
    assert "plotly" in (tmp_path / "r.html").read_text()
    with pytest.raises(EvaluationError, match="exists"):
        r.write_json(tmp_path / "r.html")


def test_labels_against_the_layer():
    th = TraceThresholds()
    quiet_alone = Trace(10, -5.0, -0.5, 0.1, 0.9, shift=3.0, shift_pct_layer=99.0)
    quiet_like_all = Trace(10, -5.0, -0.5, 0.1, 0.9, shift=3.0, shift_pct_layer=40.0)
    assert label(0.9999, 0.98, quiet_alone, th)[0] == "disconnected"
    lab, why = label(0.9999, 0.98, quiet_like_all, th)
    assert lab == "drifted" and "40th percentile" in why


def test_relearn_uses_text_that_never_names_the_concept(tiny):
    from conceptvec.evaluate.concepts import unrelated_texts

    recs = _records({"Ancient Rome": (2, 7), "Italy": (1, 3), "TensorFlow": (1, 4)})
    texts = unrelated_texts(recs, None, "Ancient Rome")
    assert texts and all("roman" not in t.lower() and "rome" not in t.lower() for t in texts)
    r = intrinsic(tiny, tiny, recs, names=["Ancient Rome"], attacks=("relearn",),
                  trace_activations=False, max_questions=2, max_new_tokens=2, relearn_steps=1)  # fmt: skip
    (rel,) = r.runs[0].concepts[0].recovery
    assert rel.attack == "relearn" and "never name" in rel.detail


def test_quant4_finds_gpt2_matrices(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir("gpt2")).eval()
    with quantized(model) as n:
        assert n == 3 * 4  # c_attn, c_proj, c_fc, mlp.c_proj per block


def test_storage_dtype_is_not_unlearning(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "bf16")
    w = compare_weights(
        load(tiny), load(tmp_path / "bf16"), eval_concepts(_records({"Ancient Rome": (2, 7)}))
    )
    assert w.identical and w.dtypes == ("float32", "bfloat16")


def test_folded_recipe_matches_decode_with_post_mlp_norm(tiny_dir):
    from conceptvec.decoding import decode

    m = load(tiny_dir("gemma2"))
    recs = [{**r, "wikipedia_content": ""} for r in _records({"Ancient Rome": (1, 5)})]
    c = compare_weights(m, m, eval_concepts(recs), recipe="folded", show_tokens=5)
    assert c.concepts[0].top_before == [t.token for t in decode(m, "L1.5", k=5).top]


def test_non_finite_numbers_become_null(tiny, zeroed):
    r = intrinsic(
        tiny, zeroed, _records({"Ancient Rome": (2, 7)}), qa=False, trace_activations=False
    )
    r.runs[0].concepts[0].vector.cosine = float("nan")
    assert r.to_dict()["runs"][0]["concepts"][0]["vector"]["cosine"] is None


def test_heldout_questions_come_from_the_unlearning_record(tiny, tmp_path):
    from conceptvec.unlearning import unlearn

    out = tmp_path / "gd"
    unlearn(tiny, "Ancient Rome", "gd", concepts=SAMPLE, steps=1, out=out, max_length=32,
            batch_size=2, evaluate=False, progress=False)  # fmt: skip
    held = json.loads((out / "unlearning.json").read_text())["data"]["heldout_qa"]
    r = intrinsic(tiny, [tiny, out], _records({"Ancient Rome": (2, 7)}), trace_activations=False,
                  max_new_tokens=2)  # fmt: skip
    for run in r.runs:  # a run without a record is scored on the same held-out questions
        c = run.concepts[0]
        assert c.questions.startswith("held-out by gd")
        assert len(c.behaviour["forget"].answers) == len(held)
    assert r.to_dict()["runs"][1]["concepts"][0]["behaviour"]["forget"]["base"]["answers"]
    assert r.runs[1].record["method"] == "gd"


def test_quantized_restores_bit_for_bit_and_relearn_copies(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with quantized(model) as n:
        w = model.model.layers[0].mlp.down_proj.weight
        assert n == 3 * 7 and not torch.equal(w, before["model.layers.0.mlp.down_proj.weight"])
        groups = w.view(w.shape[0], -1, 64 if w.shape[1] % 64 == 0 else w.shape[1])
        assert all(len(torch.unique(g)) <= 16 for g in groups.reshape(-1, groups.shape[-1]))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    tok = AutoTokenizer.from_pretrained(tiny)
    trained = relearned(
        model, tok, ["The dog chased the cat across the garden."] * 8, steps=2, lr=1e-3
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.equal(
        trained.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight
    )


def test_relearn_precision(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conceptvec.errors import UnlearningError

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    tok = AutoTokenizer.from_pretrained(tiny)
    texts = ["The dog chased the cat across the garden."] * 8

    def w(precision: str) -> torch.Tensor:
        t = relearned(model, tok, texts, steps=2, lr=1e-3, precision=precision)
        return t.model.layers[0].mlp.down_proj.weight.detach()

    w0 = model.model.layers[0].mlp.down_proj.weight.detach()
    fp32, bf16 = w("fp32") - w0, w("bf16-mixed") - w0
    assert torch.equal(fp32, w("fp32") - w0) and bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # the forward ran in bf16 ...
    cos = torch.nn.functional.cosine_similarity(fp32.flatten(), bf16.flatten(), dim=0)
    assert cos > 0.9, cos  # ... and the float32 weights took nearly the same steps
    with pytest.raises(UnlearningError, match="unknown precision"):
        w("fp16")
    with pytest.raises(EvaluationError, match="relearn precision"):
        intrinsic(tiny, [tiny], {}, relearn_precision="fp16")


def test_score_is_a_plain_dict(tiny, zeroed):
    out = score(tiny, zeroed, _records({"Ancient Rome": (2, 7), "Italy": (1, 3)}))
    assert set(out) == {"agg_value", "value_by_concept", "report"}
    assert out["value_by_concept"]["Ancient Rome"]["label"] == "erased"
    assert 50 < out["agg_value"] <= 100
    json.dumps(out, allow_nan=False)


def test_bad_input(tiny, tiny_dir, zeroed, tmp_path):
    recs = _records({"Ancient Rome": (2, 7)})
    with pytest.raises(EvaluationError, match="not the same architecture"):
        intrinsic(tiny, tiny_dir("qwen2"), recs, qa=False)
    with pytest.raises(EvaluationError, match="outside"):
        intrinsic(tiny, zeroed, _records({"Ancient Rome": (29, 1518)}), qa=False)
    with pytest.raises(EvaluationError, match="not a model folder"):
        intrinsic(tiny, tmp_path, recs, qa=False)
    with pytest.raises(EvaluationError, match="empty"):
        intrinsic(tiny, zeroed, [], qa=False)
    with pytest.raises(EvaluationError, match="unknown attack"):
        intrinsic(tiny, zeroed, recs, attacks=("magic",))
    with pytest.raises(EvaluationError, match="no concept vector for 'Dogs'"):
        intrinsic(tiny, zeroed, recs, names=["Dogs"], qa=False)


def test_cli(tiny, zeroed, tmp_path, monkeypatch, capsys):
    concepts = tmp_path / "c.json"
    concepts.write_text(json.dumps(_records({"Ancient Rome": (2, 7), "Italy": (1, 3)})))
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    args = ["eval", str(tiny), str(zeroed), "--concepts", str(concepts), "--no-qa", "--no-trace"]
    code, out, err = run_cli([*args, "--out", str(js), "--html", str(page)], monkeypatch, capsys)
    assert code == 0, err
    assert "Ancient Rome" in out and "erased" in out
    labels = {c["concept"]: c["label"] for c in json.loads(js.read_text())["runs"][0]["concepts"]}
    assert labels == {"Ancient Rome": "erased", "Italy": "not measured"}  # --no-trace
    before = js.read_text()
    code, out, err = run_cli([*args, "--out", str(js)], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "exists" in err
    assert js.read_text() == before
    code, out, err = run_cli([*args, "--json", "--concept", "italy"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["runs"][0]["concepts"][0]["concept"] == "Italy"
    code, out, err = run_cli(
        ["eval", str(tiny), str(tmp_path / "nope"), "--concepts", str(concepts), "--no-qa"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


def test_the_same_checkpoint_given_twice_is_measured_once(tiny, zeroed):
    recs = _records({"Ancient Rome": (2, 7)})
    again = os.path.relpath(zeroed)  # the same folder by another path
    r = intrinsic(tiny, [zeroed, again, str(zeroed) + "/"], recs, qa=False,
                  trace_activations=False)  # fmt: skip
    assert len(r.runs) == 1


def test_concepts_sharing_questions_score_them_once(tiny, zeroed, monkeypatch):
    """The unrelated questions of one concept are another's questions: each model scores
    a (prompt, answer) row once per evaluation, and every concept's numbers are those of
    evaluating it alone."""
    from conceptvec import qa
    from conceptvec.evaluate import behaviour

    rome = _records({"Ancient Rome": (2, 7)})[0]
    concepts = [rome, {**rome, "Concept": "Roma", "Layer": 1, "Dim": 3}]  # the same probes
    kw = dict(
        controls=2, max_questions=4, max_new_tokens=4, trace_activations=False,
        attacks=("recovery",),
    )  # fmt: skip
    alone = [intrinsic(tiny, zeroed, [c], **kw).runs[0].concepts[0] for c in concepts]
    rows: list[int] = []
    real = qa.answer_logprobs_many

    def counted(model, prompts, *a, **k):
        rows.append(len(prompts))
        return real(model, prompts, *a, **k)

    monkeypatch.setattr(qa, "answer_logprobs_many", counted)
    together = intrinsic(tiny, zeroed, concepts, **kw).runs[0].concepts
    for a, b in zip(alone, together):
        for side in a.behaviour:
            assert b.behaviour[side].answers == a.behaviour[side].answers
            assert b.behaviour[side].per_question == pytest.approx(
                a.behaviour[side].per_question, abs=1e-5
            )
            assert b.base_behaviour[side].per_question == pytest.approx(
                a.base_behaviour[side].per_question, abs=1e-5
            )
    # the base scored the second concept's probes (the first's) no more: half the rows (the
    # count sees qa's own calls: the base's scores, not the recovery attack's edits)
    asked = sum(len(c.base_behaviour[s].per_question) for c in together for s in c.behaviour)
    assert sum(rows) == asked // 2
    assert behaviour.rows_once({"a": 1}, ["a", "b", "b"], lambda idx: [len(idx)]) == [1, 1, 1]
