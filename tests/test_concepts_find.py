"""The concept finder on tiny random models: token sets, set search on both sides, the
stages end to end, the verdict rules, the CLI and the resumable build."""

from __future__ import annotations

import json

import pytest

import conceptvec as cv
from conceptvec.concepts import (
    VERDICTS,
    ActivationEvidence,
    ConceptVector,
    FindThresholds,
    KnockoutEvidence,
    WeightEvidence,
    judge,
    read_concepts,
    write_concepts,
)
from conceptvec.concepts.build import PARTIAL_SUFFIX, build_concepts
from conceptvec.concepts.tokens import concept_tokens, name_words, spellings
from conceptvec.concepts.validate import decisive
from conceptvec.decoding import project, residual_vectors
from conceptvec.errors import ConceptTokensError

from .conftest import run_cli

QA = ["Who went to Hogwarts?", "Who are Ron and Hermione?", "Where did Harry Potter go?"]
UNRELATED = ["What is the capital of France?", "What did the dog chase?"]
TEXT = ["Harry Potter went to Hogwarts with Ron and Hermione. Harry Potter and Ron went."]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return cv.load(str(tiny_dir("llama")), quiet=True)


def test_name_words_drop_stop_words_and_keep_multiword_names():
    assert name_words("Culture of Latin America") == ["Culture", "Latin", "America"]
    assert name_words("COVID-19") == ["COVID", "19"]
    assert name_words("the of") == []
    assert " Rome" in spellings("Rome") and " rome" not in spellings("Rome")
    assert " Dog" in spellings("dog") and "dog" in spellings("dog")


def test_concept_tokens_match_whole_words_only(tiny):
    c = concept_tokens(tiny, "Harry Potter", TEXT)
    assert set(c.core) <= {"Harry", "Potter"} and c.core
    for word, ids in c.core.items():
        for i in ids:
            assert c.texts[i].strip()[:3] == word[:3], (word, c.texts[i])
    assert not set(c.kind) & set(c.ids)
    assert json.dumps(c.to_dict()) and "core:" in str(c)
    with pytest.raises(ConceptTokensError, match="no word of"):
        concept_tokens(tiny, "Zzyzx Qwxyz")
    with pytest.raises(ConceptTokensError, match="no content word"):
        concept_tokens(tiny, "of the")


def _brute_keys(model, ids, best_of, sign):
    """Every neuron's key, computed from full projections (z within each neuron's row)."""
    out = {}
    for layer in range(model.dims.n_layers):
        full = project(model, residual_vectors(model, layer, "down"))
        z = (full - full.mean(1, keepdim=True)) / full.std(1, correction=0, keepdim=True)
        key = (sign * z[:, ids]).topk(best_of, dim=1).values.mean(1)
        for i, k in enumerate(key.tolist()):
            out[(layer, i)] = k
    return out


@pytest.mark.parametrize("side", ["top", "bottom", "both"])
def test_set_search_ranks_like_a_brute_force_z_score(tiny, side):
    ids = concept_tokens(tiny, "Harry Potter").core_ids
    hits = cv.search_weights(tiny, token_ids=ids, side=side, best_of=2, top=5)
    keys = {}
    for sign in {"top": [1], "bottom": [-1], "both": [1, -1]}[side]:
        for n, k in _brute_keys(tiny, ids, 2, sign).items():
            keys[n] = max(keys.get(n, -1e9), k)
    best = sorted(keys.values(), reverse=True)[:5]
    assert [h.key for h in hits] == pytest.approx(best, abs=1e-3)
    for h in hits:
        assert h.side in (("top", "bottom") if side == "both" else (side,))
        assert len(h.matched) == 2 and h.top_tokens
        assert keys[(h.neuron.layer, h.neuron.index)] == pytest.approx(h.key, abs=1e-3)


def test_find_concept_runs_every_stage(tiny):
    r = cv.find_concept(
        tiny,
        "Harry Potter",
        texts=TEXT,
        qa=QA,
        unrelated_qa=UNRELATED,
        candidates=4,
        validate=2,
        controls=3,
        max_new_tokens=3,
        progress=False,
    )
    assert len(r.candidates) == 4 and len(r.validated) == 2
    assert {c.weights.search for c in r.candidates} <= {"name", "text"}
    assert r.candidates[0].weights.search == "name" or r.candidates[0].verdict != "unvalidated"
    assert r.prompting == "paper" and len(r.references) == len(QA) + len(UNRELATED)
    for c in r.candidates:
        assert c.verdict in VERDICTS and c.reasons and c.activations is not None
        assert c.weights.side in ("top", "bottom") and len(c.weights.tokens) == 20
    min_drop = FindThresholds().min_drop
    for c in r.validated:
        assert [k.mode for k in c.knockouts] == ["zero", "mean", "noise"]
        for k in c.knockouts:
            # the controls of a knockout are scored only when its drop could make it count
            if -k.delta_concept >= min_drop:
                assert len(k.control_delta_concept) == 3 and k.drop_percentile is not None
            else:
                assert not k.control_delta_concept and k.drop_percentile is None
                assert "not measured" in (k.controls_skipped or "")
    for row, c in zip(r.table(), r.candidates):
        k = decisive(c)
        if k is not None:
            want = "not measured" if k.controls_skipped else k.drop_percentile
            assert row["control pct"] == want
            assert k.specificity == pytest.approx(k.delta_unrelated - k.delta_concept)
    assert r.settings["all_controls"] is False
    json.dumps(r.to_dict())
    assert "verdict" in str(r) and "<table>" in r._repr_html_() and r.plot().data
    assert set(r.seconds) >= {"tokens", "weights", "activations", "causality"}


def test_without_qa_nothing_is_called_a_concept_vector(tiny):
    r = cv.find_concept(tiny, "Harry Potter", candidates=3, progress=False)
    assert {c.verdict for c in r.candidates} == {"unvalidated"} and r.best is None
    assert all("no QA" in c.reasons[0] for c in r.candidates)


def _vector(n_concept=9, n_kind=1, dc=-0.2, du=0.0, pct=100.0, mean=-1.0, side="top"):
    named = n_concept + n_kind
    breadth = n_kind / named if named else 0.0
    w = WeightEvidence(side, 1, 5.0, ["a"] * 20, 0.5, 0.3, breadth, n_concept, n_kind)
    k = KnockoutEvidence("zero", "zero L1.1", dc, du, du - dc, pct, 100.0, [-0.001], [0.0])
    a = ActivationEvidence(mean, 0.0, 0.2, 10, 10)
    return ConceptVector("X", "m", "L1.1", "down", w, a, [k])


def test_verdict_rules():
    t = FindThresholds()
    cases = {
        "concept": _vector(),
        "category": _vector(n_concept=2, n_kind=8),
        "not causal": _vector(dc=-0.001),
    }
    unspecific = _vector(du=-0.15)
    weak = _vector(pct=50.0)
    for want, c in [*cases.items(), ("category", unspecific), ("not causal", weak)]:
        judge(c, t)
        assert c.verdict == want, (want, c.reasons)
        assert c.reasons
    # a knockout whose controls were not scored: its percentile reads "not measured"
    unscored = _vector(dc=-0.001, pct=None)
    unscored.knockouts[0].controls_skipped = "control percentile not measured: short of it"
    judge(unscored, t)
    assert unscored.verdict == "not causal" and "control percentile not measured" in str(unscored)
    assert "drop pct not measured" in str(unscored)
    none_run = _vector(pct=None)
    judge(none_run, t)
    assert none_run.verdict == "not causal" and "no random control was run" in none_run.reasons[0]
    # breadth needs min_named (3) concept and kind tokens: one kind token is no category
    edge = _vector(n_concept=1, n_kind=2)
    judge(edge, t)
    assert edge.verdict == "category" and "breadth 0.67" in edge.reasons[0]
    for n_concept, n_kind in [(0, 1), (1, 1), (0, 0)]:
        causal = _vector(n_concept=n_concept, n_kind=n_kind)
        judge(causal, t)
        assert causal.verdict == "unclear" and "name neither" in causal.reasons[0], causal.reasons
        weak = _vector(n_concept=n_concept, n_kind=n_kind, dc=-0.001)
        judge(weak, t)
        assert weak.verdict == "not causal" and "name neither" in weak.reasons[-1]
    broad = _vector(n_concept=0, n_kind=1, du=-0.15)
    judge(broad, t)
    assert broad.verdict == "category" and "not specific" in broad.reasons[0]
    assert _vector(mean=-1.0).writes_concept is False  # top side, negative activation
    assert _vector(mean=-1.0, side="bottom").writes_concept is True


def test_cli_find_and_its_errors(tiny_dir, tmp_path, monkeypatch, capsys):
    folder = str(tiny_dir("llama"))
    qa = tmp_path / "qa.txt"
    qa.write_text("\n".join(QA) + "\n")
    code, out, err = run_cli(
        [
            "concepts",
            "find",
            folder,
            "Harry Potter",
            "--qa",
            str(qa),
            "--candidates",
            "3",
            "--validate",
            "1",
            "--controls",
            "2",
            "--modes",
            "zero",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["concept"] == "Harry Potter" and len(data["candidates"]) == 3
    assert data["settings"]["all_controls"] is False
    code, out, err = run_cli(
        ["concepts", "find", folder, "Harry Potter", "--qa", str(qa), "--candidates", "2",
         "--validate", "1", "--controls", "2", "--modes", "zero", "--max-new-tokens", "2",
         "--all-controls", "--json"], monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["settings"]["all_controls"] is True
    ks = [k for c in data["candidates"] for k in c["knockouts"]]
    assert ks and all(len(k["control_delta_concept"]) == 2 for k in ks)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for args, msg in [
        (["Zzyzx Qwxyz"], "no word of"),
        (["Harry", "--qa", str(empty)], "empty"),
        (["Harry", "--qa", str(tmp_path / "missing.txt")], "missing"),
        (["Harry", "--qa", str(qa), "--chat"], "chat template"),
        (["Harry", "--modes", "melt"], "unknown knockout mode"),
    ]:
        code, _out, err = run_cli(["concepts", "find", folder, *args], monkeypatch, capsys)
        last = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(last) == 1 and msg in last[0], (args, err)
        assert "Traceback" not in err


def _source(tmp_path):
    entries = [
        {
            "Concept": "Harry Potter",
            "Layer": "5",
            "Dim": "77",
            "QA": str(QA),
            "unrelated_QA": str(UNRELATED),
            "wikipedia_content": TEXT[0],
            "text_completion": str([{"First_half": "Harry Potter went", "Second_half": "to"}]),
        },
        {
            "Concept": "dog",
            "Layer": "3",
            "Dim": "9",
            "QA": str(["What did the dog chase?"]),
            "unrelated_QA": str(["Where is Paris?"]),
            "wikipedia_content": "The dog chased the cat.",
        },
    ]
    path = tmp_path / "src.json"
    path.write_text(json.dumps(entries, indent=4))
    return path


def test_build_writes_this_models_vectors_and_resumes(tiny, tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "ours.json"
    kw = dict(candidates=2, validate=1, controls=2, modes=["zero"], max_new_tokens=2)
    results = build_concepts(tiny, src, out, progress=False, **kw)
    written = read_concepts(out)
    assert [e.concept for e in written] == ["Harry Potter", "dog"]
    raw = json.loads(out.read_text())
    assert raw[0]["source_Layer"] == 5 and raw[0]["source_Dim"] == 77
    assert isinstance(raw[0]["Layer"], str)  # the source's style: Layer as a string
    assert raw[0]["verdict"] in VERDICTS and raw[0]["conceptvec"]["vector"]["neuron"]
    assert f"L{raw[0]['Layer']}.{raw[0]['Dim']}" == raw[0]["conceptvec"]["vector"]["neuron"]
    assert results[0][1] is not None and not (tmp_path / ("ours.json" + PARTIAL_SUFFIX)).exists()
    before = out.read_bytes()
    with pytest.raises(cv.ConceptvecError, match="exists"):
        build_concepts(tiny, src, out, progress=False, **kw)
    assert out.read_bytes() == before
    # an interrupted run leaves a partial file; the rerun takes what it holds
    partial = tmp_path / ("again.json" + PARTIAL_SUFFIX)
    key = {"model": tiny.name, "unrelated": 10, **{k: repr(v) for k, v in kw.items()}}
    partial.write_text(json.dumps({"key": key, "done": {"Harry Potter": raw[0]}}))
    again = build_concepts(tiny, src, tmp_path / "again.json", progress=False, **kw)
    assert again[0][1] is None and again[1][1] is not None
    assert json.loads((tmp_path / "again.json").read_text())[0] == raw[0]
    other = tmp_path / ("again2.json" + PARTIAL_SUFFIX)
    other.write_text(json.dumps({"key": {"other": 1}, "done": {}}))
    with pytest.raises(cv.ConceptvecError, match="other settings"):
        build_concepts(tiny, src, tmp_path / "again2.json", progress=False, **kw)
    assert not (tmp_path / "again2.json").exists()


def test_build_update_rebuilds_the_named_rows_and_keeps_the_others(tiny, tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "ours.json"
    kw = dict(candidates=2, validate=1, controls=2, modes=["zero"], max_new_tokens=2)
    with pytest.raises(cv.ConceptvecError, match="nothing to update"):
        build_concepts(tiny, src, out, update=True, concepts=["dog"], progress=False, **kw)
    build_concepts(tiny, src, out, progress=False, **kw)
    raw = json.loads(out.read_text())
    raw[0]["note"] = "built by an older finder"  # must survive the update as it is
    raw[1]["verdict"], raw[1]["Layer"] = "stale", "0"  # must be replaced
    out.write_text(json.dumps(raw, indent=4))
    results = build_concepts(tiny, src, out, update=True, concepts=["dog"], progress=False, **kw)
    assert [e.concept for e, _ in results] == ["dog"]
    after = json.loads(out.read_text())
    assert after[0] == raw[0] and list(after[0]) == list(raw[0])
    assert after[1]["verdict"] in VERDICTS and after[1]["Layer"] != "0"
    assert after[1]["conceptvec"]["key"] == ["dog"]
    assert not (tmp_path / ("ours.json" + PARTIAL_SUFFIX)).exists()


def test_cli_build_refuses_an_existing_output(tiny_dir, tmp_path, monkeypatch, capsys):
    src = _source(tmp_path)
    out = tmp_path / "exists.json"
    out.write_text("mine")
    folder = str(tiny_dir("llama"))
    code, _out, err = run_cli(
        ["concepts", "build", folder, "--from", str(src), "--out", str(out)],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "exists" in err and "--update" in err and out.read_text() == "mine"
    # --update reads the output first: a file that is not a concepts file stops the run
    code, _out, err = run_cli(
        ["concepts", "build", folder, "--from", str(src), "--out", str(out), "--update"],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "Traceback" not in err and out.read_text() == "mine"
    write_concepts(read_concepts(src), tmp_path / "copy.json")
    assert read_concepts(tmp_path / "copy.json") == read_concepts(src)


def test_groups_count_each_word_form_once(tiny):
    c = concept_tokens(tiny, "Harry Potter")
    ids, groups = c.core_ids, c.forms(c.core_ids)
    hits = cv.search_weights(tiny, token_ids=ids, groups=groups, side="top", best_of=2, top=3)
    for h in hits:
        full = project(tiny, residual_vectors(tiny, h.neuron.layer, "down"))[h.neuron.index]
        z = (full - full.mean()) / full.std(correction=0)
        best: dict[int, float] = {}
        for i, g in zip(ids, groups):
            best[g] = max(best.get(g, -1e9), float(z[i]))
        want = sum(sorted(best.values(), reverse=True)[:2]) / min(2, len(best))
        assert h.key == pytest.approx(want, abs=1e-3)
    with pytest.raises(cv.ConceptvecError, match="groups"):
        cv.search_weights(tiny, token_ids=ids, groups=groups[:-1] or [0, 0])


# ------------------------------------------------------------------ category neurons (issue 24)
def test_a_neuron_that_serves_other_concepts_is_a_category_neuron():
    c = _vector()  # would be a concept vector on its own
    c.weights.shared_with = ["Baseball"]
    judge(c, FindThresholds())
    assert c.verdict == "category" and "Baseball" in c.reasons[0], c.reasons


def test_find_checks_its_candidates_against_a_reference_list(tiny):
    kw = dict(texts=TEXT, qa=QA, unrelated_qa=UNRELATED, candidates=3, validate=1, controls=2,
              modes=["zero"], max_new_tokens=2, progress=False)  # fmt: skip
    alone = cv.find_concept(tiny, "Harry Potter", **kw)
    assert all(not c.weights.shared_with for c in alone.candidates)
    # "Potter Harry" searches the same words: every name-search candidate serves it too
    r = cv.find_concept(tiny, "Harry Potter", reference=["Harry Potter", "Potter Harry"], **kw)
    by_name = [c for c in r.candidates if c.weights.search == "name"]
    assert by_name and all(c.weights.shared_with == ["Potter Harry"] for c in by_name)
    assert all(c.verdict in ("category", "unvalidated") for c in by_name)
    assert r.settings["reference"] == ["Harry Potter", "Potter Harry"]


def _row(concept, *cands):
    """A built row: candidates (neuron, verdict), the first one its vector with evidence."""
    (n0, v0), *rest = cands
    vector = _vector().to_dict() | {"neuron": n0, "verdict": v0, "reasons": ["old"]}
    layer, dim = n0[1:].split(".")
    others = [{"neuron": n, "side": "top", "verdict": v} for n, v in rest]
    extra = {"verdict": v0, "side": "top", "conceptvec": {"vector": vector, "others": others}}
    return cv.concepts.ConceptEntry(concept, int(layer), int(dim), ["q?"], extra=extra)


def test_build_check_names_no_neuron_twice_and_says_which_concepts_share_it():
    from conceptvec.concepts.category import check_file

    rows = [
        _row("Baseball", ("L29.229", "not causal"), ("L29.991", "not causal")),
        _row("TRPG", ("L29.229", "concept"), ("L27.1434", "category"), ("L29.849", "not causal")),
        _row(
            "Shakespeare",
            ("L5.827", "not causal"),
            ("L27.1434", "not causal"),
            ("L29.229", "unvalidated"),
        ),  # fmt: skip
        _row("Lonely", ("L1.1", "concept"), ("L1.2", "unvalidated")),
        _row("Crowded", ("L29.991", "concept"), ("L27.1434", "unvalidated")),
    ]
    out = {r.concept: r for r in check_file(rows)}
    picks = [(r.layer, r.dim) for r in out.values() if r.layer is not None]
    assert len(picks) == len(set(picks))  # no neuron is the vector of two rows
    assert (out["Lonely"].layer, out["Lonely"].dim) == (1, 1)
    assert out["Lonely"].extra == rows[3].extra  # nothing shared: untouched
    trpg = out["TRPG"].extra["conceptvec"]
    assert out["TRPG"].extra["verdict"] == "not causal" and trpg["vector"]["neuron"] == "L29.849"
    assert "no evidence" in trpg["vector"]["reasons"][0]  # an old file recorded only the pick
    old = next(o for o in trpg["others"] if o["neuron"] == "L29.229")
    assert old["verdict"] == "category" and old["shared_with"] == ["Baseball", "Shakespeare"]
    assert old["evidence"]["weights"]["shared_with"] == ["Baseball", "Shakespeare"]
    assert "Baseball" in old["evidence"]["reasons"][0] and old["evidence"]["reasons"][1] == "old"
    # every candidate of Crowded is another row's: it names no vector
    assert out["Crowded"].layer is None and out["Crowded"].extra["verdict"] == "none"
    assert out["Shakespeare"].extra["conceptvec"]["vector"]["neuron"] == "L5.827"
    again = check_file(list(out.values()))
    assert [r.to_dict() for r in again] == [r.to_dict() for r in out.values()]  # idempotent


def test_cli_find_takes_qa_and_text_from_a_concepts_file(tiny_dir, tmp_path, monkeypatch, capsys):
    from conceptvec.commands.concepts import concept_record

    rome = concept_record("conceptvectors-dev", "ancient rome")  # packaged, any case
    assert rome.concept == "Ancient Rome" and rome.qa and rome.wikipedia_content
    code, _, err = run_cli(
        ["concepts", "find", str(tmp_path / "no-model"), "Atlantis", "--concepts",
         "conceptvectors-dev"], monkeypatch, capsys,
    )  # fmt: skip
    assert code == 2 and "no concept 'Atlantis'" in err and "(2 more)" in err, err


def test_batched_knockouts_equal_one_knockout_at_a_time(tiny):
    """The finder runs every knockout of every candidate together (one unedited pass, the
    answers verified against the unedited ones); the evidence must be exactly what one
    evaluate_qa per knockout gives: log p deltas, control percentiles, answers, BLEU."""
    from dataclasses import asdict

    from conceptvec.concepts.validate import knockout, knockouts
    from conceptvec.models.backends import resolve
    from conceptvec.neurons import NeuronId
    from conceptvec.qa import QAScores, answer, answer_logprobs

    target = resolve(tiny)
    questions = QA + UNRELATED
    refs = answer(target, questions, max_new_tokens=6)
    base = QAScores("base", answer_logprobs(target, questions, refs))
    runs = [
        (NeuronId.parse(n), mode, mean)
        for n, mean in (("L2.7", 0.3), ("L1.40", -2.0), ("L0.3", 25.0))
        for mode in ("zero", "mean", "noise")
    ]
    args = ("down", questions, len(QA), refs, 4, 0, False, 6, base)
    together = [asdict(k) for k in knockouts(target, runs, *args)]
    alone = [asdict(knockout(target, n, mode, args[0], mean, *args[1:])) for n, mode, mean in runs]
    assert together == alone
    assert len({json.dumps(k["control_delta_concept"]) for k in alone}) == len(runs)
    assert any(k["changed_concept"] for k in alone)  # some answers moved: generation ran


def test_knockouts_under_min_drop_leave_their_controls_unscored(tiny, monkeypatch):
    """With min_drop (the finder's default), only the knockouts whose concept drop reaches
    it get their controls scored; every number computed is the one the full run gives, and
    the controls of the others are never run."""
    from dataclasses import asdict

    from conceptvec import qa
    from conceptvec.concepts.validate import knockouts
    from conceptvec.models.backends import resolve
    from conceptvec.neurons import NeuronId

    target = resolve(tiny)
    questions = QA + UNRELATED
    refs = qa.answer(target, questions, max_new_tokens=6)
    base = qa.QAScores("base", qa.answer_logprobs(target, questions, refs))
    runs = [
        (NeuronId.parse(n), mode, mean)
        for n, mean in (("L2.7", 0.3), ("L1.40", -2.0), ("L0.3", 25.0))
        for mode in ("zero", "mean", "noise")
    ]
    args = ("down", questions, len(QA), refs, 4, 0, False, 6, base)
    full = knockouts(target, runs, *args)
    drops = sorted(-k.delta_concept for k in full)
    min_drop = drops[len(drops) // 2]  # some knockouts reach it, some do not
    scored: list[int] = []
    real = qa.answer_logprobs_many

    def counting(*a, **kw):
        scored.append(len(a[3]))
        return real(*a, **kw)

    monkeypatch.setattr(qa, "answer_logprobs_many", counting)
    staged = knockouts(target, runs, *args, min_drop=min_drop)
    passing = [-k.delta_concept >= min_drop for k in full]
    assert 0 < sum(passing) < len(runs)
    assert sum(scored) == len(runs) + 4 * sum(passing)  # the knockouts, then 4 controls each
    for f, s, p in zip(full, staged, passing):
        if p:
            assert asdict(s) == asdict(f)
        else:
            assert asdict(s) == {
                **asdict(f),
                "drop_percentile": None,
                "specificity_percentile": None,
                "control_delta_concept": [],
                "control_delta_unrelated": [],
                "controls_skipped": s.controls_skipped,
            }
            assert "not measured" in (s.controls_skipped or "")
            assert f"{s.delta_concept:+.4f}" in (s.controls_skipped or "")
