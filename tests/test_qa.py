"""Behavioural QA evaluation on tiny random models: padded batches behave like single
prompts under every edit and backend, teacher-forced scores match a hand computation,
and controls, references and errors work as documented."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import conceptvec as cv
from conceptvec import qa
from conceptvec.errors import BadInterventionError
from conceptvec.interventions import generate

from .conftest import build_tiny

PROMPTS = ["The dog chased the cat across the garden", "Paris is", "Harry Potter went to"]
HAS_BACKENDS = all(importlib.util.find_spec(m) for m in ("transformer_lens", "nnsight"))


@pytest.fixture(scope="module")
def tiny():
    hf, tok = build_tiny("llama")
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    return cv.load(hf, tokenizer=tok), hf, tok


def _single(model, tok, prompt, edits, n=6):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    return generate(model, ids, edits, n)[0].tolist()


@pytest.mark.parametrize(
    "edits",
    [[], [cv.clamp("L1.3", 4.0)], [cv.zero("L2.7", positions="last")], [cv.noise("L0.5", 0.5)]],
    ids=["none", "clamp", "zero-last", "noise"],
)
def test_left_padded_batch_equals_one_prompt_at_a_time(tiny, edits):
    model, _hf, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()  # really padded
    batch = generate(model, enc["input_ids"], edits, 6, attention_mask=enc["attention_mask"])
    for row, prompt in zip(batch.tolist(), PROMPTS):
        assert row == _single(model, tok, prompt, edits)


def test_the_old_all_ones_mask_gets_padded_rows_wrong(tiny):
    """Without the mask (what generate did before), a padded row continues differently."""
    model, _hf, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    wrong = generate(model, enc["input_ids"], [], 6)
    assert any(r != _single(model, tok, p, []) for r, p in zip(wrong.tolist(), PROMPTS))


@pytest.mark.skipif(not HAS_BACKENDS, reason="needs transformer-lens and nnsight")
def test_padded_generation_agrees_across_backends(tiny):
    from .test_interventions_backends import wrap

    _model, hf, tok = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    edit = [cv.clamp("L1.3", 4.0)]
    want = [_single(hf, tok, p, edit) for p in PROMPTS]
    for name, obj in wrap(hf, tok).items():
        got = generate(obj, enc["input_ids"], edit, 6, attention_mask=enc["attention_mask"])
        assert got.tolist() == want, name


def test_masks_must_be_left_padded_and_well_formed(tiny):
    model, _hf, tok = tiny
    ids = tok(PROMPTS[:2], return_tensors="pt", padding=True)["input_ids"]
    right = torch.ones_like(ids)
    right[1, -1] = 0
    with pytest.raises(BadInterventionError, match="left padding"):
        generate(model, ids, [], 2, attention_mask=right)
    with pytest.raises(BadInterventionError, match="shape"):
        generate(model, ids, [], 2, attention_mask=right[:, 1:])


def _hand_logprob(hf, tok, prompt, answer):
    head = tok(qa.PAPER_PROMPT.format(question=prompt))["input_ids"]
    tail = tok(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        lp = hf(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(lp[len(head) - 1 + j, t]) for j, t in enumerate(tail)) / len(tail)


def test_teacher_forced_scores_match_a_hand_computation(tiny):
    model, hf, tok = tiny
    answers = ["the cat", "the capital of France", "Hogwarts with Ron"]
    got = qa.answer_logprobs(model, PROMPTS, answers, batch_size=2)
    for g, p, a in zip(got, PROMPTS, answers):
        assert g == pytest.approx(_hand_logprob(hf, tok, p, a), abs=1e-4)
    assert qa.answer_logprobs(model, PROMPTS[:1], [""]) == [0.0]


def test_evaluate_qa_reuses_references_and_ranks_against_controls(tiny):
    model, _hf, _tok = tiny
    base = qa.evaluate_qa(model, PROMPTS, max_new_tokens=4)
    assert base.prompting == "paper" and base.reference_kind == "model"  # no chat template
    assert base.references == base.base.answers and base.delta_logprob == 0.0
    r = qa.evaluate_qa(
        model,
        PROMPTS,
        cv.clamp("L2.7", 25.0),
        references=base.references,
        max_new_tokens=4,
        controls=4,
    )
    assert r.references == base.references
    assert r.base.logprob == pytest.approx(base.base.logprob)
    assert len(r.control_deltas) == 4 and len(r.control_edits) == 4
    assert all(e[0].startswith("clamp L2.") and "L2.7=" not in e[0] for e in r.control_edits)
    pct = 100 * sum(-d < -r.delta_logprob for d in r.control_deltas) / 4
    ties = 50 * sum(-d == -r.delta_logprob for d in r.control_deltas) / 4
    assert r.percentile == pytest.approx(pct + ties)
    assert len(r.after.bleu) == 3 and all(0 <= b <= 1 for b in r.after.bleu)
    again = qa.evaluate_qa(
        model,
        PROMPTS,
        cv.clamp("L2.7", 25.0),
        references=base.references,
        base=r.base,
        max_new_tokens=4,
        generate=False,
    )
    assert again.after.logprob == pytest.approx(r.after.logprob) and again.after.bleu is None
    d = r.to_dict()
    assert d["percentile"] == r.percentile and d["after"]["logprob"] == r.after.logprob
    assert "log p per answer token" in str(r)
    assert r.plot().data


def test_gold_answers_and_text_completion(tiny):
    model, _hf, _tok = tiny
    gold = qa.evaluate_qa(model, PROMPTS, gold=["a", "b", "c"], max_new_tokens=3)
    assert gold.reference_kind == "gold" and gold.references == ["a", "b", "c"]
    comp = qa.evaluate_completion(model, PROMPTS, cv.zero("L1.1"), max_new_tokens=3)
    assert comp.prompting == "raw" and len(comp.after.answers) == 3


def test_text_scores_come_from_sacrebleu_and_rouge():
    s = qa.text_scores(["the cat sat on the mat", "", "x"], ["the cat sat on the mat", "", "y"])
    assert s["bleu"][0] == pytest.approx(1.0) and s["rouge_l"][0] == pytest.approx(1.0)
    assert s["bleu"][1] == 1.0 and s["rouge_l"][2] == 0.0


def test_bad_qa_input(tiny):
    model, _hf, _tok = tiny
    with pytest.raises(BadInterventionError, match="chat template"):
        qa.evaluate_qa(model, PROMPTS, chat=True)
    with pytest.raises(BadInterventionError, match="no questions"):
        qa.evaluate_qa(model, [])
    with pytest.raises(BadInterventionError, match="reference"):
        qa.evaluate_qa(model, PROMPTS, references=["only one"])
    with pytest.raises(BadInterventionError, match="controls"):
        qa.evaluate_qa(model, PROMPTS, controls=-1)
    assert not math.isnan(qa.answer_logprobs(model, ["x"], ["y"])[0])


def test_generation_and_scoring_stay_within_the_context(tiny_dir):
    gpt2 = cv.load(str(tiny_dir("gpt2")), quiet=True)  # 64 positions
    ids = torch.zeros((1, 60), dtype=torch.long)
    with pytest.raises(BadInterventionError, match="context of 64"):
        generate(gpt2, ids, [], 10)
    with pytest.raises(BadInterventionError, match="at least 1"):
        generate(gpt2, ids[:, :5], [], 0)
    from conceptvec.interventions import logits

    with pytest.raises(BadInterventionError, match="context of 64"):
        logits(gpt2, torch.zeros((1, 70), dtype=torch.long))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "olmo2"])
def test_shared_prefix_scoring_equals_full_forward_passes(tiny_dir, family):
    """Controls skip the layers below their edit and the head runs on answers only: the
    scores must equal plain full forward passes (Gemma 2's soft-capped logits included)."""
    from conceptvec.interventions import logits
    from conceptvec.models.backends import resolve
    from conceptvec.scoring import first_layer, score_many

    target = resolve(cv.load(str(tiny_dir(family)), quiet=True))
    ids = torch.tensor([[5, 9, 12, 30, 7, 3], [8, 2, 11, 4, 0, 0]])
    spans = [(2, [30, 7, 3]), (1, [11, 4])]
    variants = [
        [],
        cv.clamp("L2.7", 6.0),
        [cv.zero("L1.3"), cv.scale("L2.4", 3.0)],
        cv.noise("L1.5", 0.5),
        cv.steer(0, torch.randn(32)),
    ]
    assert [first_layer(v) for v in variants] == [0, 2, 1, 1, 1]
    fast = score_many(target, ids, spans, variants)
    for v, got in zip(variants, fast):
        full = logits(target, ids, v).log_softmax(-1)
        want = [
            float(full[r, s : s + len(t)].gather(1, torch.tensor(t)[:, None]).mean())
            for r, (s, t) in enumerate(spans)
        ]
        assert got == pytest.approx(want, abs=1e-5), (v, got, want)
    assert fast[0] != fast[1]  # the edits change the scores


QUESTIONS = [
    "Where is Paris?",
    "Who went to Hogwarts with Ron?",
    "What did the dog chase across the garden?",
    "Which bird sang?",
    "Where is Berlin?",
]


@pytest.mark.parametrize("batch_size", [16, 2])
def test_answer_many_gives_the_answers_of_one_generation_per_edit(tiny, batch_size):
    """Verifying the unedited draft (and generating on from where it breaks) must give the
    greedy answers that generating under each edit gives: edits that keep the draft, edits
    that leave it at once, weight noise, and a steering vector."""
    model, _hf, _tok = tiny
    variants = [
        [],
        cv.scale("L2.7", 1.0),
        cv.zero("L2.7"),
        cv.clamp("L0.3", 40.0),
        cv.noise("L1.5", 0.5),
        [cv.zero("L1.3"), cv.clamp("L2.4", 3.0)],
        cv.steer(1, torch.randn(32, generator=torch.Generator().manual_seed(1)) * 4),
    ]
    kw = dict(max_new_tokens=9, batch_size=batch_size)
    fast = qa.answer_many(model, QUESTIONS, variants, **kw)
    slow = [qa.answer(model, QUESTIONS, v, **kw) for v in variants]
    assert fast == slow
    assert fast[0] == fast[1]  # an edit that changes nothing keeps the draft
    assert fast[3] != fast[0]  # and these edits do leave it
    assert fast[4] != fast[0]


def _count_generation(monkeypatch) -> list[int]:
    """From now on, record the rows of every ``generate`` call that qa makes."""
    calls: list[int] = []
    real = qa.generate_ids

    def counted(target, ids, *a, **k):
        calls.append(ids.shape[0])
        return real(target, ids, *a, **k)

    monkeypatch.setattr(qa, "generate_ids", counted)
    return calls


def test_answer_many_generates_only_the_rows_that_leave_the_draft(tiny, monkeypatch):
    model, _hf, _tok = tiny
    qa.answer(model, QUESTIONS, max_new_tokens=9)  # the draft, now in the answer cache
    calls = _count_generation(monkeypatch)
    qa.answer_many(model, QUESTIONS, [cv.scale("L2.7", 1.0)], max_new_tokens=9)
    assert calls == []  # nothing left the draft: no generation at all
    qa.answer_many(model, QUESTIONS, [cv.clamp("L0.3", 40.0)], max_new_tokens=9)
    assert calls and sum(calls) <= len(QUESTIONS)


def test_answer_many_accepts_the_draft_up_to_the_first_disagreement():
    from conceptvec.qa import _accept

    stop = {0}
    assert _accept([5, 6, 0], [5, 6, 0, 9], stop, 8) == ([5, 6, 0], True)  # finished draft
    assert _accept([5, 6, 7], [5, 6, 7, 9], stop, 3) == ([5, 6, 7], True)  # at the limit
    assert _accept([5, 6, 7], [5, 6, 7, 9], stop, 8) == ([5, 6, 7, 9], False)  # goes on
    assert _accept([5, 6, 7], [5, 4, 7, 9], stop, 8) == ([5, 4], False)  # leaves it
    assert _accept([5, 6, 7], [5, 0, 7, 9], stop, 8) == ([5, 0], True)  # and stops there
    assert _accept([5, 6, 0], [5, 6, 1, 9], stop, 8) == ([5, 6, 1], False)  # does not stop


@pytest.mark.parametrize("draft_kind", ["same", "perturbed", "unrelated"])
def test_answer_with_a_draft_model_gives_the_models_own_greedy_answers(tiny, draft_kind):
    """A draft from another model (a base before fine-tuning, or an unrelated one) is only
    a guess: the answers must be the model's own greedy answers whatever the draft, with
    fewer rows generated when the draft is close."""
    import copy

    model, hf, tok = tiny
    other = copy.deepcopy(hf)
    with torch.no_grad():
        if draft_kind == "perturbed":  # a fine-tune's size of change on one matrix
            w = other.model.layers[2].mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(3)) * 1e-3)
        elif draft_kind == "unrelated":
            for p in other.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.05)
    draft = cv.load(other, tokenizer=tok)
    kw = dict(max_new_tokens=9, cache=False)
    plain = qa.answer(model, QUESTIONS, **kw)
    assert qa.answer(model, QUESTIONS, draft=draft, **kw) == plain
    assert qa.answer(model, QUESTIONS, raw=True, draft=draft, **kw) == qa.answer(
        model, QUESTIONS, raw=True, **kw
    )


def test_answer_with_a_close_draft_generates_nothing_more(tiny, monkeypatch):
    model, _hf, _tok = tiny
    qa.answer(model, QUESTIONS, max_new_tokens=9)  # the draft model's answers, now cached
    calls = _count_generation(monkeypatch)
    got = qa.answer(model, QUESTIONS, max_new_tokens=9, cache=False, draft=model)
    assert calls == []  # every draft answer stands: verified, not generated
    assert got == qa.answer(model, QUESTIONS, max_new_tokens=9)


@pytest.mark.parametrize("refs", ["own", "other", "junk", "empty"])
@pytest.mark.parametrize("raw", [False, True])
def test_answer_scored_equals_answer_and_answer_logprobs(tiny, refs, raw):
    """One pass that scores references and verifies them as drafts must give the log p of
    answer_logprobs bit for bit and the answers of generating, whatever the references."""
    import copy

    model, hf, tok = tiny
    kw = dict(max_new_tokens=9, raw=raw)
    own = qa.answer(model, QUESTIONS, cache=False, **kw)
    if refs == "own":
        references = own
    elif refs == "other":  # a perturbed model's answers: the case of a base and its fine-tune
        other = copy.deepcopy(hf)
        with torch.no_grad():
            w = other.model.layers[1].mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(5)) * 0.05)
        references = qa.answer(cv.load(other, tokenizer=tok), QUESTIONS, cache=False, **kw)
    elif refs == "junk":
        references = ["zebra " * 30, "", "Paris", "x y z"] * (len(QUESTIONS) // 4 + 1)
        references = references[: len(QUESTIONS)]
    else:
        references = [""] * len(QUESTIONS)
    answers, lps = qa.answer_scored(model, QUESTIONS, references, cache=False, **kw)
    assert lps == qa.answer_logprobs(model, QUESTIONS, references, raw=raw)
    assert answers == own


def test_answer_sets_equals_answer_per_set(tiny):
    model, _hf, _tok = tiny
    sets = [(QUESTIONS[:3], False), ([], False), (PROMPTS, True), (QUESTIONS[3:], False)]
    got = qa.answer_sets(model, sets, max_new_tokens=7, batch_size=4)
    want = [qa.answer(model, p, raw=raw, max_new_tokens=7) if p else [] for p, raw in sets]
    assert got == want


def test_repeated_variants_are_scored_once_with_the_same_numbers(tiny, monkeypatch):
    """Knockouts of one layer draw the same control neurons: a variant equal to an earlier
    one (same edits, field by field) is not run again, and scores as it would alone."""
    from conceptvec import scoring
    from conceptvec.models.backends import resolve

    model, _hf, _tok = tiny
    target = resolve(model)
    ids = torch.tensor([[5, 9, 12, 30, 7, 3], [8, 2, 11, 4, 0, 0]])
    spans = [(2, [30, 7, 3]), (1, [11, 4])]
    variants = [
        cv.zero("L2.7"),
        cv.noise("L1.5", 0.5, seed=1),
        cv.zero("L2.7"),  # repeats the first
        cv.noise("L1.5", 0.5, seed=2),  # another seed: another variant
        cv.noise("L1.5", 0.5, seed=1),  # repeats the second
        cv.clamp("L2.7", 0.5),
    ]
    runs: list[int] = []
    real = scoring._run

    def counted(*a, **k):
        runs.append(1)
        return real(*a, **k)

    monkeypatch.setattr(scoring, "_run", counted)
    together = scoring.score_many(target, ids, spans, variants)
    assert len(runs) == 1 + 4  # the unedited pass, then four distinct variants
    alone = [scoring.score_many(target, ids, spans, [v])[0] for v in variants]
    assert together == alone
    assert together[1] != together[3]
