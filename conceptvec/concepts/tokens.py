"""A concept's token set, from its name and its text, with no external model and no network.

``concept_tokens(model, "Ancient Rome", texts=[article])`` returns:

- **core** tokens: each content word of the name ("Ancient", "Rome") in the spellings a
  tokenizer stores as whole words (``" Rome"``, ``"Rome"``, ``" ROME"``; lower-case words
  also capitalised), never case-folded into subword pieces (``"rome"`` inside ``"chrome"``);
  plus its **word variants** (``" Roman"``, ``" Romans"``): tokens that share the word's
  stem *and* sit close to it in the model's own unembedding (cosine >= ``variant_cos``),
  which keeps ``" Romeo"`` and ``" Romania"`` out; plus the name's **acronym** when the
  concept's text uses it and it is one token (``" NHS"`` for "National Health Service");
- **key** words: the core words the weight search ranks neurons on, the ones the concept's
  text uses far more than the language does (``"Rome"``, not ``"Ancient"``; ``"NHS"``, not
  ``"National"``); see :func:`concept_tokens`;
- **related** tokens: words frequent in the concept's text (``" Caesar"``, ``" Latin"``)
  whose unembedding is close to the core's centroid;
- **distinctive** tokens: the words the concept's text uses far more than the language does,
  whatever their place in the unembedding (``" Mexicans"``, ``" Brazilian"`` for "Culture of
  Latin America", whose name words' centroid sits near "American"): a compound name need not
  mean what its words mean apart. They join the concept's set and give the finder a second
  weight search;
- **kind** tokens: the core's nearest neighbours in the unembedding that are not in the set
  (for "Poland": ``" Germany"``, ``" Spain"``...). They stand for other concepts of the same
  kind and mark *category* neurons (see ``breadth`` in :mod:`.weights`).

Cosines use the folded, centred unembedding rows, the space every decoding lives in.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from conceptvec.atlas.head import folded_rows
from conceptvec.errors import ConceptTokensError
from conceptvec.models import Model
from conceptvec.results import Result
from conceptvec.tokens import show, token_text

STOPWORDS = frozenset(
    """a an and are as at be been but by for from had has have he her his in into is it its
    of on or that the their there these they this to was were which while who will with
    not also other than then such been being over more most some many after before during
    between about under where when what how all any each both only very""".split()
)
"""Words never used as concept words."""

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclass
class ConceptTokens(Result):
    """The token set of one concept in one model's vocabulary (ids with their text)."""

    name: str
    core: dict[str, list[int]]
    """Each name word -> the ids of its spellings and variants."""
    related: list[int] = field(default_factory=list)
    """Ids of words from the concept's text close to the core (not in ``core``)."""
    distinctive: list[int] = field(default_factory=list)
    """Ids of the words the concept's text uses far more than the language does (by the
    same measure as :attr:`specificity`), not in ``core`` or ``related``."""
    kind: list[int] = field(default_factory=list)
    """Ids of the core's nearest neighbours outside the set: other concepts of its kind."""
    texts: dict[int, str] = field(default_factory=dict)
    """Token id -> readable text, for every id above."""
    key: list[str] = field(default_factory=list)
    """The core words the weight search keys on (all of them when empty)."""
    specificity: dict[str, float] = field(default_factory=dict)
    """Each core word -> how many times more often the concept's text uses it than the
    language does, up to a constant (0 without text): its count in the text times its
    token id, over the text's length (Zipf: a token's frequency falls as 1 / its id)."""

    @property
    def core_ids(self) -> list[int]:
        """Every core id, once, in order."""
        return list(dict.fromkeys(i for ids in self.core.values() for i in ids))

    @property
    def key_ids(self) -> list[int]:
        """The ids of the key words (spellings and variants), once, in order."""
        words = self.key or list(self.core)
        return list(dict.fromkeys(i for w in words for i in self.core[w]))

    @property
    def ids(self) -> list[int]:
        """The concept's whole set: core, related, then distinctive ids."""
        return list(dict.fromkeys(self.core_ids + self.related + self.distinctive))

    def forms(self, ids: list[int]) -> list[int]:
        """Return a word-form label per id: spellings of one form (``" Rome"``, ``"Rome"``,
        ``" ROME"``) share a label, so a search counts each form once."""
        keys = [self.texts[i].strip().lower() for i in ids]
        order = sorted(set(keys))
        return [order.index(k) for k in keys]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict, tokens as text."""
        out = asdict(self)
        out["core"] = {w: [self.texts[i] for i in ids] for w, ids in self.core.items()}
        out["related"] = [self.texts[i] for i in self.related]
        out["distinctive"] = [self.texts[i] for i in self.distinctive]
        out["kind"] = [self.texts[i] for i in self.kind]
        out["texts"] = {str(k): v for k, v in self.texts.items()}
        return out

    def __str__(self) -> str:
        core = "; ".join(
            f"{w}: {', '.join(show(self.texts[i]) for i in ids)}" for w, ids in self.core.items()
        )
        related = ", ".join(show(self.texts[i]) for i in self.related[:20])
        distinctive = ", ".join(show(self.texts[i]) for i in self.distinctive[:20])
        kind = ", ".join(show(self.texts[i]) for i in self.kind[:12])
        key = ", ".join(self.key or self.core)
        return (
            f"{self.name}\n  core: {core}\n  key: {key}\n  related: {related}\n"
            f"  distinctive: {distinctive}\n  kind: {kind}"
        )


def name_words(name: str) -> list[str]:
    """Return the content words of a concept name (``"Culture of Latin America"`` ->
    ``["Culture", "Latin", "America"]``), stop words dropped."""
    return [w for w in _WORD.findall(name) if w.lower() not in STOPWORDS and len(w) > 1]


def acronyms(name: str, texts: Sequence[str] = (), min_count: int = 2) -> list[str]:
    """Return the acronyms of ``name`` that ``texts`` use at least ``min_count`` times, most
    used first (``"National Health Service"`` -> ``["NHS"]`` when the text says NHS).

    An acronym is the initials of *all* the name's words, stop words included or left out
    ("Department of Defense": DoD or DD), matched case-insensitively letter by letter, as a
    whole word of the text with at least two capitals (so "Cola" is no acronym of "Culture
    of Latin America"). Initials of part of the name are not taken: "RPG" abbreviates the
    "role-playing game" that "Tactical role-playing game" is one kind of, not the concept.
    A one-word name has none.
    """
    words = [w for w in _WORD.findall(name) if w[0].isalpha()]
    if len(words) < 2:
        return []
    wanted = {
        "".join(w[0] for w in words).upper(),
        "".join(w[0] for w in words if w.lower() not in STOPWORDS).upper(),
    }
    wanted = {a for a in wanted if len(a) >= 2}
    counts: Counter = Counter(
        w
        for t in texts
        for w in _WORD.findall(t)
        if w.upper() in wanted and sum(c.isupper() for c in w) >= 2
    )
    return [w for w, n in counts.most_common() if n >= min_count]


def spellings(word: str) -> list[str]:
    """Return the whole-word spellings of ``word`` a vocabulary may hold as one token."""
    forms = {word, word.upper()}
    if word.islower():
        forms.add(word.capitalize())
    return [p + f for f in sorted(forms) for p in (" ", "")]


class _Head:
    """Unit-norm, centred, folded unembedding rows, computed once per model."""

    def __init__(self, model: Model, chunk: int = 16384):
        vocab = model.dims.vocab
        total = torch.zeros(model.dims.d_model, dtype=torch.float64)
        for s in range(0, vocab, chunk):
            total += folded_rows(model, slice(s, s + chunk)).sum(0, dtype=torch.float64)
        self.mean = (total / vocab).float()
        self.model, self.vocab, self.chunk = model, vocab, chunk

    def rows(self, ids: list[int] | slice) -> torch.Tensor:
        w = folded_rows(self.model, ids) - self.mean
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def cosines(self, direction: torch.Tensor) -> torch.Tensor:
        """Return ``[vocab]`` cosines of every token with a unit ``direction``."""
        parts = [
            self.rows(slice(s, s + self.chunk)) @ direction
            for s in range(0, self.vocab, self.chunk)
        ]
        return torch.cat(parts)


def concept_tokens(
    model: Model,
    name: str,
    texts: Sequence[str] = (),
    *,
    variant_cos: float = 0.5,
    related_quantile: float = 0.99,
    max_related: int = 24,
    min_count: int = 2,
    max_distinctive: int = 24,
    distinctive_count: int = 3,
    kind_size: int = 200,
    common: float = 0.03,
    key_ratio: float = 4.0,
) -> ConceptTokens:
    """Return the :class:`ConceptTokens` of concept ``name`` in ``model``'s vocabulary.

    ``texts`` (the concept's Wikipedia article, say) add related words that occur at least
    ``min_count`` times and whose cosine to the core centroid is in the top
    ``1 - related_quantile`` of the vocabulary's, and up to ``max_distinctive`` distinctive
    words: those used at least ``distinctive_count`` times whose count times token id (the
    measure of :attr:`ConceptTokens.specificity`) is highest, wherever they sit in the head.
    Raises :class:`ConceptTokensError` when no word of the name is a token.

    Tokens among the first ``common`` fraction of the vocabulary are treated as common
    words (BPE and SentencePiece vocabularies are ordered roughly by frequency): a name word
    made only of them (``"New"`` in "New Zealand") is dropped when another word remains, and
    they never count as related or kind tokens.

    The name's acronym joins the core when the texts use it at least ``min_count`` times
    and it is one token (see :func:`acronyms`). The weight search keys on the core words
    whose :attr:`~ConceptTokens.specificity` is at least ``1 / key_ratio`` of the best
    word's: each word of a multi-word name also names something broader ("Health",
    "Service"), and a neuron that scores several such words a little beats one that holds
    the concept; the words the text uses far more than the language does are the concept's
    own. Without texts every core word is a key word.
    """
    words = name_words(name)
    if not words:
        raise ConceptTokensError(f"the concept name {name!r} has no content word; name it")
    text = token_text(model.tokenizer)
    vocab_texts = text.many(range(model.dims.vocab))
    index: dict[str, list[int]] = {}
    for i, t in enumerate(vocab_texts):
        index.setdefault(t, []).append(i)
    head = _Head(model)
    core: dict[str, list[int]] = {}
    plain: dict[str, int] = {}  # each word's most common spelling
    for w in words:
        ids = [i for s in spellings(w) for i in index.get(s, [])]
        if not ids and model.tokenizer is not None:  # a word of several tokens: its first piece
            pieces = model.tokenizer.tokenize(" " + w)
            first = text(model.tokenizer.convert_tokens_to_ids(pieces[0])) if pieces else ""
            if len(first.strip()) >= 4 and w.startswith(first.strip()):
                ids = index.get(first, [])
        if ids:
            core[w] = ids + _variants(w, ids, vocab_texts, head, variant_cos)
            plain[w] = min(ids)
    for a in acronyms(name, texts, min_count):
        ids = [i for s in spellings(a) for i in index.get(s, [])]
        if ids and a not in core:
            core[a], plain[a] = ids, min(ids)
    cut = int(common * model.dims.vocab)
    specific = {w: ids for w, ids in core.items() if plain[w] >= cut}
    core = specific or core
    if not core:
        raise ConceptTokensError(
            f"no word of {name!r} ({', '.join(words)}) is a token of {model.name}; "
            "name the concept with other words"
        )
    spec = _specificity(core, plain, texts, vocab_texts)
    best = max(spec.values())
    key = [w for w in core if best <= 0 or spec[w] * key_ratio >= best]
    core_ids = list(dict.fromkeys(i for ids in core.values() for i in ids))
    centroid = head.rows(core_ids).mean(0)
    centroid = centroid / centroid.norm().clamp_min(1e-12)
    cos = head.cosines(centroid)
    floor = float(cos.float().kthvalue(max(1, int(related_quantile * len(cos)))).values)
    related = _related(texts, index, set(core_ids), cos, floor, max_related, min_count, cut)
    distinctive = _distinctive(
        texts, index, set(core_ids) | set(related), max_distinctive, distinctive_count, cut
    )
    taken = set(core_ids) | set(related) | set(distinctive)
    kind = [
        int(i)
        for i in cos.topk(min(len(cos), kind_size + len(taken) + 200)).indices
        if int(i) not in taken and int(i) >= cut and _wordlike(vocab_texts[int(i)])
    ][:kind_size]
    every = core_ids + related + distinctive + kind
    texts_of = {i: vocab_texts[i] for i in every}
    return ConceptTokens(name, core, related, distinctive, kind, texts_of, key, spec)


def _specificity(
    core: dict[str, list[int]], plain: dict[str, int], texts: Sequence[str], vocab: list[str]
) -> dict[str, float]:
    """Each core word's count in ``texts`` (any of its spellings and variants, or the word
    as the name writes it) times its plainest token's id, over the texts' word count."""
    counts = Counter(w for t in texts for w in _WORD.findall(t))
    total = max(sum(counts.values()), 1)
    out = {}
    for w, ids in core.items():
        forms = {vocab[i].strip() for i in ids} | {w}
        out[w] = sum(counts[f] for f in forms) * plain[w] / total
    return out


def _wordlike(t: str) -> bool:
    s = t.strip()
    return len(s) >= 3 and s.isalpha() and s.lower() not in STOPWORDS


def _variants(
    word: str, ids: list[int], vocab_texts: list[str], head: _Head, min_cos: float
) -> list[int]:
    """Return ids of whole-word tokens sharing ``word``'s stem, close to it in the head."""
    if len(word) < 4:
        return []
    stem = word[: max(3, len(word) - 2)]
    starts = {stem, stem.upper()} | ({stem.capitalize()} if word.islower() else set())
    limit = len(word) + 4
    found = [
        i
        for i, t in enumerate(vocab_texts)
        if i not in ids
        and len(t.strip()) <= limit
        and t.strip().isalpha()
        and any(t.strip().startswith(s) for s in starts)
    ]
    if not found:
        return []
    own = head.rows(ids).mean(0)
    own = own / own.norm().clamp_min(1e-12)
    sims = head.rows(found) @ own
    return [i for i, s in zip(found, sims.tolist()) if s >= min_cos]


def _related(
    texts: Sequence[str],
    index: dict[str, list[int]],
    core: set[int],
    cos: torch.Tensor,
    min_cos: float,
    limit: int,
    min_count: int,
    cut: int,
) -> list[int]:
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w in _WORD.findall(t) if len(w) >= 4 and w.lower() not in STOPWORDS)
    scored = []
    for w, n in counts.items():
        if n < min_count:
            continue
        ids = [i for i in index.get(" " + w, []) if i not in core and i >= cut]
        if ids and float(cos[ids[0]]) >= min_cos:
            scored.append((float(cos[ids[0]]) * (1 + n) ** 0.25, ids[0]))
    scored.sort(reverse=True)
    return list(dict.fromkeys(i for _, i in scored))[:limit]


def _distinctive(
    texts: Sequence[str],
    index: dict[str, list[int]],
    taken: set[int],
    limit: int,
    min_count: int,
    cut: int,
) -> list[int]:
    """Return the ids of the ``limit`` words of ``texts`` with the highest count times token
    id (single whole-word tokens, used at least ``min_count`` times, outside ``taken`` and the
    common words below id ``cut``)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w in _WORD.findall(t) if len(w) >= 3 and w.lower() not in STOPWORDS)
    scored = []
    for w, n in counts.items():
        ids = index.get(" " + w, [])
        if n >= min_count and ids and ids[0] >= cut and ids[0] not in taken:
            scored.append((n * ids[0], ids[0]))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [i for _, i in scored[:limit]]
