"""Causal validation of a candidate: knockouts against random controls, and the verdict.

Each knockout mode (zero; mean over unrelated text; ConceptVectors' N(0, 0.1) weight
noise) runs on concept QA and unrelated QA together, scored by the teacher-forced
log-probability of the unperturbed model's answers (and BLEU/ROUGE-L of the new greedy
answers), with the same knockout on random same-layer neurons as controls. :func:`judge`
turns the evidence into a verdict with the numbers that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from conceptvec.interventions.controls import percentile
from conceptvec.interventions.edit_specs import NeuronEdit, WeightEdit, noise, zero
from conceptvec.neurons import NeuronId
from conceptvec.qa import QAEvaluation, QAScores, evaluate_qa, evaluate_qa_many

from .record import ConceptVector, KnockoutEvidence

if TYPE_CHECKING:
    from conceptvec.models.backends import Target

MODES = ("zero", "mean", "noise")
"""Knockout modes: activation to 0, activation to its mean on unrelated text, and
ConceptVectors' N(0, 0.1) noise on the neuron's weights."""


@dataclass
class FindThresholds:
    """What the verdict requires (each number is recorded in the result)."""

    percentile: float = 90.0
    """A knockout counts when it beats at least this share of the random controls."""
    min_drop: float = 0.02
    """...and lowers the concept answers' log p by at least this much per token (nats)."""
    max_unrelated_share: float = 0.5
    """Specific: the unrelated QA moves at most this share of the concept QA's change."""
    max_breadth: float = 0.5
    """Above this breadth the weights name a category, not the concept."""
    min_named: int = 3
    """Breadth counts only when at least this many of the neuron's tokens are the concept's
    or its kind's; with fewer its tokens name neither, and the weights cannot make it a
    ``concept`` or a ``category`` (a specific knockout is then ``unclear``)."""


def shared_reason(others: list[str]) -> str:
    """The reason a neuron that serves other concepts as well is a ``category`` neuron."""
    names = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
    return (
        f"its tokens serve other concepts as well: {names} rank it among their own candidates "
        "by weights, so it holds what they share, not this concept"
    )


def decisive(c: ConceptVector) -> KnockoutEvidence | None:
    """The knockout that best shows the candidate's effect (largest concept drop)."""
    if not c.knockouts:
        return None
    return min(c.knockouts, key=lambda k: k.delta_concept)


def knockout_edit(
    neuron: NeuronId, mode: str, matrix: str, mean_value: float, seed: int
) -> NeuronEdit | WeightEdit:
    """Return the edit of knockout ``mode`` on ``neuron`` (see :data:`MODES`)."""
    if mode == "zero":
        return zero(neuron)
    if mode == "mean":
        return NeuronEdit(neuron, "clamp", float(mean_value), "all", "mean")
    return noise(neuron, 0.1, matrix=matrix, seed=seed)


def knockout(
    target: Target,
    neuron: NeuronId,
    mode: str,
    matrix: str,
    mean_value: float,
    questions: list[str],
    n_concept: int,
    references: list[str],
    controls: int,
    seed: int,
    chat: bool,
    max_new_tokens: int,
    base: QAScores | None,
) -> KnockoutEvidence:
    """Return one knockout's evidence, by one :func:`evaluate_qa` (its controls scored
    together, its answers generated): what :func:`knockouts` finds for many at once."""
    edit = knockout_edit(neuron, mode, matrix, mean_value, seed)
    r = evaluate_qa(
        target,
        questions,
        edit,
        references=references,
        chat=chat,
        max_new_tokens=max_new_tokens,
        controls=controls,
        base=base,
        seed=seed,
    )
    return evidence(mode, edit, r, n_concept, references)


def knockouts(
    target: Target,
    runs: list[tuple[NeuronId, str, float]],
    matrix: str,
    questions: list[str],
    n_concept: int,
    references: list[str],
    controls: int,
    seed: int,
    chat: bool,
    max_new_tokens: int,
    base: QAScores | None,
    min_drop: float | None = None,
) -> list[KnockoutEvidence]:
    """Return the evidence of each knockout ``(neuron, mode, mean value)`` in ``runs``, the
    same as :func:`knockout` gives one by one, computed together by :func:`evaluate_qa_many`:
    one unedited pass per batch of questions shared by every knockout and control, and
    each knockout's answers verified against the unedited ones instead of generated anew.

    With ``min_drop``, only the knockouts that lower the concept answers' log p by at least
    that much get their controls scored: below it no percentile can make a knockout count
    (:func:`judge`), so the others' percentiles are left unmeasured (None, and
    ``controls_skipped`` says why). The knockouts' own numbers, and those of the controls
    that are scored, are the same as with every control scored."""
    edits = [knockout_edit(n, mode, matrix, mean, seed) for n, mode, mean in runs]

    def drops_enough(r: QAEvaluation, limit: float) -> bool:
        return -_delta(r.after, r.base, slice(0, n_concept)) >= limit

    found = evaluate_qa_many(
        target,
        questions,
        edits,
        references=references,
        chat=chat,
        max_new_tokens=max_new_tokens,
        controls=controls,
        base=base,
        seed=seed,
        controls_if=None if min_drop is None else partial(drops_enough, limit=min_drop),
    )
    out = [
        evidence(mode, e, r, n_concept, references)
        for (_, mode, _), e, r in zip(runs, edits, found)
    ]
    for k in out:
        if controls and not k.control_delta_concept:
            k.controls_skipped = (
                f"control percentile not measured: concept QA moved {k.delta_concept:+.4f}/"
                f"token, short of the {min_drop} drop a verdict needs, so its controls were "
                "not scored"
            )
    return out


def _delta(after: QAScores, base: QAScores, part: slice) -> float:
    """Mean change of the log p per token over the questions ``part`` (negative: hurt)."""
    a, b = after.logprob[part], base.logprob[part]
    return sum(x - y for x, y in zip(a, b)) / max(len(a), 1)


def evidence(
    mode: str,
    edit: NeuronEdit | WeightEdit,
    r: QAEvaluation,
    n_concept: int,
    references: list[str],
) -> KnockoutEvidence:
    """Return a knockout's evidence from its QA evaluation (concept questions first)."""
    c, u = slice(0, n_concept), slice(n_concept, None)
    dc, du = _delta(r.after, r.base, c), _delta(r.after, r.base, u)
    cdc = [_delta(s, r.base, c) for s in r.controls]
    cdu = [_delta(s, r.base, u) for s in r.controls]

    def mean(xs: list[float] | None) -> float | None:
        return None if xs is None else sum(xs) / max(len(xs), 1)

    ans = r.after.answers or []
    return KnockoutEvidence(
        mode=mode,
        edit=str(edit),
        delta_concept=dc,
        delta_unrelated=du,
        specificity=du - dc,
        drop_percentile=percentile(-dc, [-x for x in cdc]),
        specificity_percentile=percentile(du - dc, [b - a for a, b in zip(cdc, cdu)]),
        control_delta_concept=cdc,
        control_delta_unrelated=cdu,
        bleu_concept=mean(r.after.bleu[c]) if r.after.bleu else None,
        bleu_unrelated=mean(r.after.bleu[u]) if r.after.bleu else None,
        rouge_concept=mean(r.after.rouge_l[c]) if r.after.rouge_l else None,
        rouge_unrelated=mean(r.after.rouge_l[u]) if r.after.rouge_l else None,
        changed_concept=mean([a != b for a, b in zip(ans[c], references[c])]) if ans else None,
        changed_unrelated=mean([a != b for a, b in zip(ans[u], references[u])]) if ans else None,
        answers=ans[c],
    )


def judge(c: ConceptVector, t: FindThresholds) -> None:
    """Set ``c.verdict`` and ``c.reasons`` from its evidence (see :class:`FindThresholds`)."""
    if not c.knockouts:
        c.verdict, c.reasons = "unvalidated", ["no knockout was run (weights and activations only)"]
        return
    hurts = [
        k
        for k in c.knockouts
        if k.drop_percentile is not None
        and k.drop_percentile >= t.percentile
        and -k.delta_concept >= t.min_drop
    ]
    specific = [
        k for k in hurts if abs(k.delta_unrelated) <= t.max_unrelated_share * abs(k.delta_concept)
    ]
    best = decisive(c)
    assert best is not None  # c.knockouts is not empty
    against = (
        "no random control was run"
        if best.drop_percentile is None
        else f"drop beats {best.drop_percentile:.0f}% of {len(best.control_delta_concept)} "
        "random same-layer controls"
    )
    shown = (
        f"{best.mode} moved concept QA log p by {best.delta_concept:+.4f}/token and unrelated "
        f"by {best.delta_unrelated:+.4f} ({best.controls_skipped or against})"
    )
    w = c.weights
    named = w.n_concept + w.n_kind
    few = (
        f"only {named} of its {len(w.tokens)} tokens are the concept's ({w.n_concept}) or its "
        f"kind's ({w.n_kind}), under {t.min_named}: its weights name neither"
    )
    if w.shared_with:
        c.verdict = "category"
        c.reasons = [shared_reason(w.shared_with), shown]
    elif named >= t.min_named and w.breadth > t.max_breadth:
        c.verdict = "category"
        c.reasons = [
            f"breadth {w.breadth:.2f} > {t.max_breadth} ({w.n_kind} kind, {w.n_concept} "
            "concept tokens): its tokens are mostly other concepts of the same kind",
            shown,
        ]
    elif not hurts:
        c.verdict = "not causal"
        c.reasons = [
            f"no knockout lowered concept QA by >= {t.min_drop} nats/token beyond "
            f"{t.percentile:.0f}% of controls; best: {shown}"
        ] + ([few] if named < t.min_named else [])
    elif not specific:
        c.verdict = "category"
        c.reasons = [f"not specific: unrelated QA moved as well; {shown}"]
    elif named < t.min_named:
        c.verdict = "unclear"
        c.reasons = [f"its knockout hurts the concept QA specifically ({shown}), but {few}"]
    else:
        k = min(specific, key=lambda x: x.delta_concept)
        c.verdict = "concept"
        c.reasons = [
            f"{k.mode}: concept QA {k.delta_concept:+.4f}/token vs unrelated "
            f"{k.delta_unrelated:+.4f} (drop percentile {k.drop_percentile:.0f}, specificity "
            f"percentile {k.specificity_percentile:.0f}); breadth {w.breadth:.2f} "
            f"({w.n_kind} kind, {w.n_concept} concept tokens)"
        ]
