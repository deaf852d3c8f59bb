"""``ConceptVector``: one neuron tied to one concept, with every piece of evidence for it.

Three kinds of evidence, each its own small dataclass:

- :class:`WeightEvidence`: what the vector says through the LM head (the side the concept
  sits on, its rank in the weight search, its related-token rate and its breadth);
- :class:`ActivationEvidence`: when it fires (signed mean activation on concept vs unrelated
  text, and the AUROC separating them);
- :class:`KnockoutEvidence`: what breaks without it, per knockout mode (zero, mean, noise),
  on concept QA and unrelated QA, against random same-layer controls.

The :attr:`ConceptVector.verdict` is one of :data:`VERDICTS`, and
:attr:`ConceptVector.reasons` says which numbers decided it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from conceptvec.results import Result
from conceptvec.tokens import show

if TYPE_CHECKING:
    from conceptvec.types import PrettyPrinter

VERDICTS = ("concept", "category", "unclear", "not causal", "unvalidated")
"""Best first: ``concept`` (names the concept, and its knockout hurts the concept's QA
specifically); ``category`` (names other concepts of its kind, serves other concepts
of the file or reference list as well, or its knockout hurts unrelated QA as well); ``unclear`` (its knockout hurts the concept's QA specifically, but
too few of its tokens are the concept's or its kind's to say which it holds); ``not
causal`` (no knockout hurts the concept's QA beyond the controls); ``unvalidated`` (weights
and activations only)."""


@dataclass
class WeightEvidence:
    """What the neuron's vector decodes to, measured against the concept's token set."""

    side: str
    """``top`` when the concept's tokens score high, ``bottom`` when they score low."""
    rank: int
    """1-based place among the finder's candidates: the name search and the text search
    (both sides, all layers), interleaved."""
    key: float
    """The search key: mean z-score of the neuron's 3 best word forms, on ``side``, of the
    name's key words or the text's distinctive words (see ``search``)."""
    tokens: list[str]
    """The neuron's first ``k`` tokens on ``side``."""
    related_rate: float
    """Share of those tokens in the concept's set (core and related words)."""
    core_rate: float
    """Share of those tokens among the name's own words and their variants."""
    breadth: float
    """Share of kind tokens (the concept's neighbours: other concepts of its kind) among
    the concept and kind tokens it lists; high values mark category neurons."""
    n_concept: int
    """How many of its ``k`` tokens are in the concept's set."""
    n_kind: int
    """How many of its ``k`` tokens are kind tokens."""
    search: str = "name"
    """Which weight search ranked it: ``name`` (the name's key words) or ``text`` (the
    text's distinctive words); the finder interleaves the two lists."""
    shared_with: list[str] = field(default_factory=list)
    """Other concepts whose own weight search ranks this neuron among their candidates (its
    tokens serve them as well): the file's other concepts in ``concepts build``, a reference
    list in ``find_concept(reference=...)``. Non-empty makes it a ``category`` neuron."""


@dataclass
class ActivationEvidence:
    """How the neuron fires on concept text against unrelated text (signed, per token)."""

    mean_concept: float
    mean_unrelated: float
    auroc: float
    """P(activation on a concept-text token > on an unrelated-text token)."""
    n_concept: int
    n_unrelated: int

    @property
    def separation(self) -> float:
        """``|2 * AUROC - 1|``: 0 for no separation, 1 for perfect, either sign."""
        return abs(2 * self.auroc - 1)


@dataclass
class KnockoutEvidence:
    """One knockout mode on concept QA and unrelated QA, against random controls.

    Log-probabilities are per token of the reference answers (the unperturbed model's own),
    teacher-forced; ``delta_*`` are changes from the unperturbed model (negative: hurt).
    """

    mode: str
    """``zero`` (activation set to 0), ``mean`` (set to its mean on unrelated text) or
    ``noise`` (ConceptVectors' N(0, 0.1) on the down column)."""
    edit: str
    delta_concept: float
    delta_unrelated: float
    specificity: float
    """``delta_unrelated - delta_concept``: how much more the concept QA was hurt."""
    drop_percentile: float | None
    """Percentile of the concept QA's drop among the controls' drops (100: worse than all)."""
    specificity_percentile: float | None
    control_delta_concept: list[float]
    control_delta_unrelated: list[float]
    bleu_concept: float | None = None
    bleu_unrelated: float | None = None
    rouge_concept: float | None = None
    rouge_unrelated: float | None = None
    changed_concept: float | None = None
    """Share of concept answers whose greedy text changed."""
    changed_unrelated: float | None = None
    answers: list[str] = field(default_factory=list)
    """The concept questions' answers after the knockout."""
    controls_skipped: str | None = None
    """Why the controls were not scored, where they were not: a knockout whose concept
    drop is under ``min_drop`` cannot count whatever its percentile (``drop_percentile`` is
    then None, "not measured")."""


@dataclass
class ConceptVector(Result):
    """A neuron that holds a concept, with the evidence and the verdict on it."""

    concept: str
    model: str
    neuron: str
    """``L<layer>.<index>``."""
    matrix: str
    weights: WeightEvidence
    activations: ActivationEvidence | None = None
    knockouts: list[KnockoutEvidence] = field(default_factory=list)
    verdict: str = "unvalidated"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def writes_concept(self) -> bool | None:
        """Whether, on concept text, the neuron pushes its concept tokens *up*: its mean
        activation there has the sign of its side (positive for top, negative for bottom).
        When False, zeroing it releases the concept instead of removing it."""
        if self.activations is None:
            return None
        sign = 1 if self.weights.side == "top" else -1
        return sign * self.activations.mean_concept > 0

    def knockout(self, mode: str) -> KnockoutEvidence | None:
        """Return the evidence of one knockout mode, or None if it was not run."""
        return next((k for k in self.knockouts if k.mode == mode), None)

    def to_dict(self) -> dict[str, object]:
        """Return every field as JSON-ready data (field names kept)."""
        out = asdict(self)
        out["writes_concept"] = self.writes_concept
        return out

    def _repr_pretty_(self, printer: PrettyPrinter, _cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"

    def __str__(self) -> str:
        w = self.weights
        lines = [
            f"{self.concept}: {self.neuron} ({self.matrix}, {w.side})  verdict: {self.verdict}",
            f"  tokens: {', '.join(show(t) for t in w.tokens[:10])}",
            f"  weights: rank {w.rank}, related {w.related_rate:.2f}, core {w.core_rate:.2f}, "
            f"breadth {w.breadth:.2f}",
        ]
        a = self.activations
        if a is not None:
            lines.append(
                f"  activations: mean {a.mean_concept:+.3f} on concept text vs "
                f"{a.mean_unrelated:+.3f} unrelated, AUROC {a.auroc:.3f}"
            )
        for k in self.knockouts:
            unrun = "not measured" if k.controls_skipped else "-"
            pct = unrun if k.drop_percentile is None else f"{k.drop_percentile:.0f}"
            spct = unrun if k.specificity_percentile is None else f"{k.specificity_percentile:.0f}"
            bleu = (
                ""
                if k.bleu_concept is None
                else (f", BLEU {k.bleu_concept:.2f} concept / {k.bleu_unrelated:.2f} unrelated")
            )
            lines.append(
                f"  {k.mode:<5} log p/token {k.delta_concept:+.4f} concept, "
                f"{k.delta_unrelated:+.4f} unrelated (drop pct {pct}, specificity pct {spct})"
                f"{bleu}"
            )
        lines += [f"  because {r}" for r in self.reasons]
        lines += [f"  warning: {m}" for m in self.warnings]
        return "\n".join(lines)
