"""``find_concept``: from a concept's name to validated concept vectors in *your* model.

Four stages, each recorded in the result:

1. **tokens**: the concept's token set from its name and text (:func:`concept_tokens`);
2. **weights**: every neuron ranked exactly from the weights on the name's tokens, both
   signs (:func:`conceptvec.search_weights`); for each of the ``candidates`` best, its
   related-token rate and breadth;
3. **activations**: each candidate's signed activation on concept text vs unrelated text
   (mean and AUROC over tokens);
4. **causality**: for the ``validate`` best, knockouts in the modes a paper reports (zero;
   mean over unrelated text; ConceptVectors' N(0, 0.1) weight noise), measured on concept
   QA and unrelated QA with the teacher-forced log-probability of the unperturbed model's
   answers and BLEU/ROUGE-L, against ``controls`` random same-layer neurons.

Then a verdict per candidate (:data:`~.record.VERDICTS`), with the numbers that decided it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from conceptvec.activations import read_activations, separation
from conceptvec.atlas.search import WeightHit, search_weights
from conceptvec.config import FindConfig
from conceptvec.decoding import decode
from conceptvec.errors import ConceptSearchError
from conceptvec.models import Model, load
from conceptvec.models.backends import resolve
from conceptvec.neurons import NeuronId
from conceptvec.qa import QAScores, answer, answer_logprobs
from conceptvec.reference_texts import REFERENCE_TEXTS
from conceptvec.results import Result, SearchResult
from conceptvec.tokens import show
from conceptvec.types import ModelSource, Tokenizer

from .atlas_rank import context_counts, open_atlas, rank_with_atlas
from .category import mark_shared, reference_pools
from .record import VERDICTS, ActivationEvidence, ConceptVector, WeightEvidence
from .tokens import ConceptTokens, concept_tokens
from .validate import MODES, FindThresholds, decisive, judge, knockouts

if TYPE_CHECKING:
    from conceptvec.atlas import Atlas
    from conceptvec.models.backends import Target

DEFAULT_UNRELATED_QA = (
    "How many days are there in a leap year?",
    "What is the boiling point of water at sea level?",
    "How do plants make their food?",
    "What is the largest ocean on Earth?",
    "How many legs does a spider have?",
    "What gas do humans need to breathe?",
    "What is the main ingredient of bread?",
    "How many minutes are there in an hour?",
    "What colour do you get by mixing blue and yellow?",
    "What does a thermometer measure?",
)
"""Everyday questions used as unrelated QA when none are given."""


@dataclass
class ConceptSearch(Result):
    """What :func:`find_concept` found: every candidate with its evidence and verdict."""

    concept: str
    model: str
    matrix: str
    tokens: ConceptTokens
    prompting: str | None
    """``chat`` or ``paper`` (None when no QA was run)."""
    candidates: list[ConceptVector]
    questions: list[str] = field(default_factory=list)
    unrelated_questions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    """The unperturbed model's answers: concept questions, then unrelated ones."""
    thresholds: FindThresholds = field(default_factory=FindThresholds)
    settings: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def validated(self) -> list[ConceptVector]:
        """The candidates that went through the knockouts."""
        return [c for c in self.candidates if c.verdict != "unvalidated"]

    @property
    def concept_vectors(self) -> list[ConceptVector]:
        """The candidates whose verdict is ``concept``, best first."""
        return [c for c in self.candidates if c.verdict == "concept"]

    @property
    def best(self) -> ConceptVector | None:
        """The best validated concept vector, or None when no candidate passed."""
        found = self.concept_vectors
        return found[0] if found else None

    def to_dict(self) -> dict[str, object]:
        """Return everything as JSON-ready data (field names kept)."""
        out = asdict(self)
        out["tokens"] = self.tokens.to_dict()
        out["candidates"] = [c.to_dict() for c in self.candidates]
        out["best"] = None if self.best is None else self.best.neuron
        return out

    def table(self) -> list[dict[str, object]]:
        """Return one row per candidate: the numbers a paper's table would show."""
        rows = []
        for c in self.candidates:
            k = decisive(c)
            a = c.activations
            rows.append(
                {
                    "neuron": c.neuron,
                    "side": c.weights.side,
                    "tokens": ", ".join(show(t) for t in c.weights.tokens[:5]),
                    "related": round(c.weights.related_rate, 2),
                    "breadth": round(c.weights.breadth, 2),
                    "act concept": None if a is None else round(a.mean_concept, 3),
                    "AUROC": None if a is None else round(a.auroc, 3),
                    "mode": None if k is None else k.mode,
                    "concept QA dlogp": None if k is None else round(k.delta_concept, 4),
                    "unrelated QA dlogp": None if k is None else round(k.delta_unrelated, 4),
                    "concept BLEU": None
                    if k is None or k.bleu_concept is None
                    else round(k.bleu_concept, 3),
                    "unrelated BLEU": None
                    if k is None or k.bleu_unrelated is None
                    else round(k.bleu_unrelated, 3),
                    "control pct": None
                    if k is None
                    else ("not measured" if k.controls_skipped else k.drop_percentile),
                    "verdict": c.verdict,
                }
            )
        return rows

    def __str__(self) -> str:
        head = (
            f"{self.concept} in {self.model} ({self.matrix}; {self.prompting or 'no'} QA prompts; "
            f"{len(self.validated)} of {len(self.candidates)} candidates validated)"
        )
        cols = [
            "neuron",
            "side",
            "related",
            "breadth",
            "act concept",
            "AUROC",
            "mode",
            "concept QA dlogp",
            "unrelated QA dlogp",
            "control pct",
            "verdict",
        ]
        rows = self.table()
        width = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in cols} if rows else {}
        lines = [head, "  ".join(c.rjust(width[c]) for c in cols)] if rows else [head]
        lines += ["  ".join(_cell(r[c]).rjust(width[c]) for c in cols) for r in rows]
        lines += [""] + [str(c) for c in self.validated]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = self.table()
        if not rows:
            return f"<p>{html.escape(self.concept)}: no candidate</p>"
        cols = list(rows[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>"
            for r in rows
        )
        title = html.escape(str(self).splitlines()[0])
        return f"<p><b>{title}</b></p><table><tr>{head}</tr>{body}</table>"


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


# --------------------------------------------------------------------------- stages
def search_concept(
    model: ModelSource, concept: ConceptTokens, *, top: int = 10, side: str = "both", **kw: Any
) -> SearchResult:
    """Return the ``top`` neurons whose vectors score the concept's key words highest.

    Each neuron's key is its mean z-score over its 3 best word forms of the key words
    (``" Rome"`` and ``"Rome"`` count once, ``" Roman"`` apart), on both signs by default;
    other keywords go to :func:`conceptvec.search_weights`. The finder, ``conceptvec search``
    with a multi-word name and the benchmark all search this way.
    """
    ids = concept.key_ids
    hits = search_weights(
        model, token_ids=ids, groups=concept.forms(ids), top=top, side=side, best_of=3, **kw
    )
    hits.query = concept.name
    return hits


def search_text_words(
    model: ModelSource, concept: ConceptTokens, *, top: int = 10, side: str = "both", **kw: Any
) -> list[WeightHit]:
    """Return the ``top`` neurons that score the concept's *distinctive* text words highest
    (:attr:`ConceptTokens.distinctive`: " Mexicans", " Brazilian" for "Culture of Latin
    America"), keyed as :func:`search_concept` keys the name's words. Empty without text."""
    ids = concept.distinctive
    if not ids:
        return []
    return search_weights(
        model, token_ids=ids, groups=concept.forms(ids), top=top, side=side, best_of=3, **kw
    )


def merge_hits(*lists: list[WeightHit], top: int) -> list[tuple[WeightHit, int]]:
    """Interleave ranked hit lists (the first of each, then the second of each, ...), each
    neuron once, at its first place; return the first ``top`` as ``(hit, list index)``."""
    out: list[tuple[WeightHit, int]] = []
    seen: set[str] = set()
    for i in range(max((len(x) for x in lists), default=0)):
        for n, hits in enumerate(lists):
            if i < len(hits) and str(hits[i].neuron) not in seen:
                seen.add(str(hits[i].neuron))
                out.append((hits[i], n))
    return out[:top]


def _weight_evidence(model: ModelSource, hits: list, concept: ConceptTokens, k: int, matrix: str):
    decoded = decode(model, [h.neuron for h in hits], matrix=matrix, k=k)
    decoded = decoded if isinstance(decoded, list) else [decoded]
    whole, core, kind = set(concept.ids), set(concept.core_ids), set(concept.kind)
    out = []
    for rank, (h, d) in enumerate(zip(hits, decoded), 1):
        listed = d.top if h.side == "top" else d.bottom
        ids = [t.id for t in listed]
        n_concept = sum(i in whole for i in ids)
        n_kind = sum(i in kind for i in ids)
        out.append(
            WeightEvidence(
                side=h.side,
                rank=rank,
                key=h.key,
                tokens=[t.token for t in listed],
                related_rate=n_concept / max(len(ids), 1),
                core_rate=sum(i in core for i in ids) / max(len(ids), 1),
                breadth=n_kind / (n_kind + n_concept) if n_kind + n_concept else 0.0,
                n_concept=n_concept,
                n_kind=n_kind,
            )
        )
    return out


def _clip_texts(tokenizer: Tokenizer, texts: Sequence[str], budget: int) -> list[str]:
    """Return ``texts`` cut to about ``budget`` tokens in all (whole texts first)."""
    out, left = [], budget
    for t in texts:
        if left <= 0:
            break
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        out.append(t if len(ids) <= left else str(tokenizer.decode(ids[:left])))
        left -= len(ids)
    return out


def find_concept(
    model: ModelSource,
    name: str,
    config: FindConfig | Mapping[str, Any] | None = None,
    *,
    texts: Sequence[str] = (),
    qa: Sequence[str] = (),
    unrelated_qa: Sequence[str] | None = None,
    unrelated_texts: Sequence[str] | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    reference: Sequence[str] = (),
    atlas: str | os.PathLike[str] | Atlas | None = None,
    **settings: Any,
) -> ConceptSearch:
    """Return a :class:`ConceptSearch`: the neurons of ``model`` that hold concept ``name``.

    ``texts`` (the concept's article, say) feed the token set and the activation stage;
    ``qa`` (questions about the concept) and ``unrelated_qa`` (others; everyday questions by
    default) feed the knockouts of the ``validate`` best of ``candidates``. Without ``qa``
    no candidate is validated, and each says so. ``reference`` names other concepts: a
    candidate that their own weight searches rank among their ``candidates`` serves them
    as well, and is a ``category`` neuron (:mod:`conceptvec.concepts.category`).
    ``atlas`` (an atlas folder with an activation part, or an :class:`~conceptvec.atlas.Atlas`)
    reorders the candidates before the later stages: those whose corpus exemplars hold the
    concept's own words rank up (:mod:`conceptvec.concepts.atlas_rank`).
    ``config`` is a :class:`FindConfig` (or its dict); ``settings`` are its fields as
    keywords (``candidates=20``), applied on top; the result records the whole config in
    ``settings["config"]``.
    """
    cfg = FindConfig.build(config, **settings)
    matrix, candidates, validate, controls = cfg.matrix, cfg.candidates, cfg.validate, cfg.controls
    modes, k, max_text_tokens, chat, seed = (
        cfg.modes,
        cfg.k,
        cfg.max_text_tokens,
        cfg.chat,
        cfg.seed,
    )
    max_new_tokens, thresholds = cfg.max_new_tokens, cfg.thresholds
    # weights first: a name that matches nothing fails before the torch model is built
    if isinstance(model, (str, os.PathLike)):
        model = load(model, quiet=True)
    m = model if isinstance(model, Model) else resolve(model, tokenizer).model
    unknown = [x for x in modes if x not in MODES]
    if unknown or not 0 <= validate <= candidates or candidates < 1 or controls < 0:
        raise ConceptSearchError(
            f"bad settings: modes {list(modes)} (use {', '.join(MODES)}), candidates "
            f"{candidates} >= 1, 0 <= validate {validate} <= candidates, controls {controls} >= 0"
        )
    qa = [q.strip() for q in qa if q.strip()]
    unrelated = [q.strip() for q in (unrelated_qa or DEFAULT_UNRELATED_QA) if q.strip()]
    seconds: dict[str, float] = {}
    bar = _Stages(progress, 4 + (validate * len(modes) if qa else 0), name)

    try:
        t0 = time.perf_counter()
        concept = concept_tokens(m, name, texts)
        bar.step("weights", seconds, "tokens", t0)
        merged = merge_hits(
            search_concept(m, concept, matrix=matrix, top=candidates),
            search_text_words(m, concept, matrix=matrix, top=candidates),
            top=candidates,
        )
        atlas_counts: list[int | None] | None = None
        if atlas is not None:
            opened = open_atlas(atlas)
            atlas_counts = context_counts(opened, [h.neuron for h, _ in merged], concept.core_ids)
            order = rank_with_atlas(atlas_counts)
            merged = [merged[i] for i in order]
            atlas_counts = [atlas_counts[i] for i in order]
        hits = [h for h, _ in merged]
        found = [
            ConceptVector(name, m.name, str(h.neuron), matrix, w)
            for h, w in zip(hits, _weight_evidence(m, hits, concept, k, matrix))
        ]
        for c, (_, source) in zip(found, merged):
            c.weights.search = ("name", "text")[source]
        if reference:
            pools = reference_pools(m, reference, exclude=name, matrix=matrix, top=candidates)
            mark_shared(found, pools)
        bar.step("activations", seconds, "weights", t0)
        target = resolve(model, tokenizer)
        if texts:
            tok = target.tokenizer
            concept_texts = _clip_texts(tok, texts, max_text_tokens)
            others = list(unrelated_texts) if unrelated_texts else unrelated + list(REFERENCE_TEXTS)
            neurons = [h.neuron for h in hits]
            seps = separation(
                read_activations(target, concept_texts, neurons),
                read_activations(target, others, neurons),
            )
            for c, s in zip(found, seps):
                c.activations = ActivationEvidence(
                    s.mean_concept, s.mean_unrelated, s.auroc, s.n_concept, s.n_unrelated
                )
                if c.writes_concept is False:
                    c.warnings.append(
                        f"its mean activation on concept text is {s.mean_concept:+.3f}, against "
                        f"its {c.weights.side} side: in context it pushes the concept's tokens "
                        "down, so zeroing it releases them rather than removing them"
                    )
        bar.step("reference answers", seconds, "activations", t0)
        prompting, refs = None, []
        if qa and validate:
            is_chat = _chat(target, chat)
            prompting = "chat" if is_chat else "paper"
            questions = qa + unrelated
            refs = answer(target, questions, chat=is_chat, max_new_tokens=max_new_tokens)
            base = QAScores("base", answer_logprobs(target, questions, refs, chat=is_chat))
            bar.step(None, seconds, "reference answers", t0)
            chosen = found[:validate]
            runs = [
                (
                    NeuronId.parse(c.neuron),
                    mode,
                    c.activations.mean_unrelated if c.activations else 0.0,
                )
                for c in chosen
                for mode in modes
            ]
            bar.label(f"{len(runs)} knockouts")
            evidence = knockouts(
                target,
                runs,
                matrix,
                questions,
                len(qa),
                refs,
                controls,
                seed,
                is_chat,
                max_new_tokens,
                base,
                min_drop=None if cfg.all_controls else thresholds.min_drop,
            )
            for i, c in enumerate(chosen):
                c.knockouts.extend(evidence[i * len(modes) : (i + 1) * len(modes)])
                judge(c, thresholds)
            for _ in runs:
                bar.step(None, seconds, None, t0)
            seconds["causality"] = time.perf_counter() - t0 - sum(seconds.values())
        else:
            for c in found:
                judge(c, thresholds)
        for c in found:
            if c.verdict == "unvalidated":
                c.reasons = ["not validated: " + ("no QA given" if not qa else "beyond --validate")]
    finally:
        bar.close()
    found.sort(key=lambda c: VERDICTS.index(c.verdict))  # stable: weight rank within one
    return ConceptSearch(
        concept=name,
        model=m.name,
        matrix=matrix,
        tokens=concept,
        prompting=prompting,
        candidates=found,
        questions=qa,
        unrelated_questions=unrelated,
        references=refs,
        thresholds=thresholds,
        settings=dict(
            candidates=candidates,
            validate=validate,
            controls=controls,
            all_controls=cfg.all_controls,
            modes=list(modes),
            k=k,
            max_text_tokens=max_text_tokens,
            max_new_tokens=max_new_tokens,
            seed=seed,
            noise_std=0.1,
            reference=list(reference),
            config=cfg.to_dict(),
            **(
                {}
                if atlas_counts is None
                else {
                    "atlas": str(opened.path),
                    "atlas_context_counts": dict(zip((str(h.neuron) for h in hits), atlas_counts)),
                }
            ),
        ),
        seconds=seconds,
    )


def _chat(target: Target, chat: bool | None) -> bool:
    from conceptvec.qa import use_chat

    return use_chat(target, chat)


class _Stages:
    """A tqdm bar over the stages (silent when ``on`` is False)."""

    def __init__(self, on: bool, total: int, name: str):
        self.bar = None
        if on:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"{name}: tokens", leave=False)
        self.name = name

    def label(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.name}: {text}")

    def step(self, nxt: str | None, seconds: dict, done: str | None, t0: float) -> None:
        if done is not None:
            seconds[done] = time.perf_counter() - t0 - sum(seconds.values())
        if self.bar is not None:
            self.bar.update(1)
        if nxt is not None:
            self.label(nxt)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
