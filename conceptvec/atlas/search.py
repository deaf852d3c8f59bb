"""Exact search from the weights: rank every neuron by one token's score in its projection.

No atlas is needed: the score of token ``t`` for every neuron of a layer is one product
``V @ w_t`` with ``w_t`` the folded unembedding row of ``t`` (the same number decoding
would give). Matching spellings (``dog``, `` dog``, ``Dog``...) are scored together and each
neuron keeps its best one. For the winners, the token's rank in the neuron's full
projection is reported too (1 = the neuron's top token).

Raw scores favour neurons with large norms, whose projections are large everywhere; the
default ranks by the z-score of the token within the neuron's own projection instead,
``(v.w_t - v.mu) / sqrt(v' C v)``, with ``mu`` and ``C`` the mean and covariance of the
folded unembedding rows (computed once, exactly, without projecting any neuron).

What does not depend on the searched word (the token texts, ``mu`` and ``C``, each neuron's
mean and sd, a GGUF's dequantized head) is computed once per model and kept in memory and
on disk (:mod:`conceptvec.models.disk_cache`), so a search after the first reads only the
neuron vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from conceptvec.decoding import project, residual_vectors
from conceptvec.errors import AtlasError
from conceptvec.models import Model, load
from conceptvec.models.disk_cache import cached_tensors
from conceptvec.neurons import NeuronId, check_matrix, parse_layers
from conceptvec.results import Result, SearchResult
from conceptvec.tokens import show
from conceptvec.types import ModelSource

from .atlas import match_ids
from .head import expert_tag, folded_rows, neuron_spread


@dataclass(frozen=True)
class WeightHit(Result):
    """A neuron ranked by the score of searched tokens in its projection."""

    neuron: NeuronId
    matrix: str
    token: str
    """The searched token that scored best for this neuron."""
    token_id: int
    score: float
    zscore: float
    """The score in standard deviations of the neuron's projection over the vocabulary."""
    vocab_rank: int
    """1 when ``token`` is the neuron's top (or, on the bottom side, bottom) token."""
    side: str = "top"
    """``top`` (the tokens score high) or ``bottom`` (they score low: the neuron suppresses
    them when it fires positively, writes them when it fires negatively)."""
    key: float = 0.0
    """What the ranking used: the mean z-score (or raw score) of the ``best_of`` best
    searched tokens, signed so that larger is better on ``side``."""
    matched: tuple[str, ...] = ()
    """The searched tokens among the neuron's best, best first."""
    top_tokens: tuple[str, ...] = ()
    """The neuron's own first tokens on ``side``, to judge the hit by."""

    def __str__(self) -> str:
        tops = " ".join(show(t) for t in self.top_tokens[:5])
        return (
            f"{self.neuron} {self.matrix} {self.side}: {show(self.token)} z={self.zscore:.2f} "
            f"score={self.score:.3f} vocab rank {self.vocab_rank}" + (f"  [{tops}]" if tops else "")
        )

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (field names kept)."""
        out = asdict(self)
        out["neuron"] = str(self.neuron)
        out["matched"], out["top_tokens"] = list(self.matched), list(self.top_tokens)
        return out


def matching_tokens(model: Model, word: str, exact: bool = False) -> list[int]:
    """Return the ids of tokens that read ``word`` (ignoring case and spaces unless exact)."""
    ids = match_ids(model.token_texts(), word, exact)
    if not ids:
        pieces = ""
        if model.tokenizer is not None:
            split = model.tokenizer.tokenize(" " + word.strip())
            pieces = f" (it splits into {len(split)} tokens: {split})" if len(split) > 1 else ""
        raise AtlasError(
            f"no single token reads {word!r}{pieces}; search one of its pieces, or a concept "
            "name with `conceptvec concepts find`"
        )
    return ids


SIDES = ("top", "bottom", "both")
KEEP_BYTES = 256 << 20
"""A model whose searched matrix holds at most this many float32 bytes (SmolLM2-135M: 106 MB)
keeps its neuron vectors in memory for the next search, and a GGUF keeps them dequantized on
disk for the next process (dequantizing SmolLM2's 30 down matrices takes 0.2-0.7 s, reading
them back 0.05 s)."""


def search_weights(
    model: ModelSource,
    word: str | None = None,
    *,
    token_ids: list[int] | None = None,
    groups: list[int] | None = None,
    matrix: str = "down",
    top: int = 20,
    exact: bool = False,
    side: str = "top",
    best_of: int = 1,
    layers: str | list[int] | None = None,
    fold_norm: bool = True,
    by: str = "zscore",
    show_tokens: int = 8,
    progress: bool = False,
) -> SearchResult:
    """Return the ``top`` neurons whose projection scores the searched tokens highest.

    Search one ``word`` (all its spellings: ``dog``, `` dog``, ``Dog``...) or a set of
    ``token_ids`` (a concept's token set, see :func:`conceptvec.concepts.concept_tokens`).
    Each neuron's key is the mean of its ``best_of`` best searched tokens (1: the best one);
    with ``groups`` (one label per token id, e.g. one per word form, so that ``" Rome"`` and
    ``"Rome"`` count once) it is the mean of its ``best_of`` best groups, each scoring its
    best token.
    ``side="bottom"`` ranks by the most negative scores, ``"both"`` by either (each neuron
    keeps its better side). ``by="zscore"`` (default) measures a token's score in standard
    deviations of the neuron's own projection; ``by="score"`` uses the raw score.
    ``progress=True`` shows a bar over the layers on stderr.
    """
    if by not in ("zscore", "score"):
        raise AtlasError(f"unknown ranking {by!r}; use zscore or score")
    if side not in SIDES:
        raise AtlasError(f"unknown side {side!r}; use top, bottom or both")
    if top < 1 or best_of < 1:
        raise AtlasError(f"top and best_of must be >= 1 (got {top}, {best_of})")
    m = model if isinstance(model, Model) else load(model)
    matrix = check_matrix(matrix, m.spec.gated)
    n_layers = m.dims.n_layers
    layers = parse_layers(layers)  # "0-3,7" as on the command line
    for layer in layers or []:
        NeuronId(layer, 0).check(n_layers, m.dims.d_mlp)
    if token_ids is not None:
        ids = list(dict.fromkeys(int(i) for i in token_ids))
        if not ids or not all(0 <= i < m.dims.vocab for i in ids):
            raise AtlasError(f"token_ids must be a non-empty list of ids below {m.dims.vocab}")
    elif word is not None:
        ids = matching_tokens(m, word, exact)
    else:
        raise AtlasError("nothing to search: pass a word or token_ids")
    group_of, n_best = None, min(best_of, len(ids))
    if groups is not None:
        if token_ids is None or len(groups) != len(token_ids):
            raise AtlasError("groups needs token_ids and one group label per token id")
        first = {int(t): int(g) for t, g in zip(token_ids, groups)}
        labels = sorted(set(first.values()))
        group_of = torch.tensor([labels.index(first[i]) for i in ids])
        n_best = min(best_of, len(labels))
    folded = folded_rows(m, ids, fold_norm).T  # [d_model, t]
    signs = {"top": (1.0,), "bottom": (-1.0,), "both": (1.0, -1.0)}[side]
    # (ranking key, sign, (layer, expert), index, the neuron's vector) per candidate
    found: list[tuple[float, float, tuple[int, int | None], int, torch.Tensor]] = []
    experts: list[int | None] = [*range(m.dims.n_experts)] or [None]  # MoE: every expert
    chosen = list(layers) if layers is not None else range(n_layers)
    todo: Iterable[tuple[int, int | None]] = [(lay, e) for lay in chosen for e in experts]
    if progress:
        from tqdm.auto import tqdm

        unit = "expert" if m.dims.n_experts else "layer"
        todo = tqdm(todo, desc=f"searching {matrix} weights", unit=unit, leave=False)
    for layer, expert in todo:
        v = _neuron_vectors(m, layer, matrix, fold_norm, expert)
        raw = v @ folded  # [d_mlp, t]: one product per layer
        if by == "zscore":  # each neuron's mean and sd over the vocabulary, computed once
            mean, sd = neuron_spread(m, layer, matrix, fold_norm, vectors=v, expert=expert)
            raw = (raw - mean[:, None]) / sd[:, None]
        for sign in signs:
            signed = sign * raw
            if group_of is not None:  # each group scores its best token
                index = group_of.expand_as(signed)
                empty = signed.new_full((signed.shape[0], int(group_of.max()) + 1), -torch.inf)
                signed = empty.scatter_reduce(1, index, signed, "amax")
            key = signed.topk(n_best, dim=1).values.mean(1)
            for i in key.topk(min(top, len(key))).indices.tolist():
                found.append((float(key[i]), sign, (layer, expert), i, v[i].clone()))
    found.sort(key=lambda x: -x[0])
    best: dict[tuple[tuple[int, int | None], int], tuple] = {}
    for f in found:  # with side="both", a neuron keeps its better side
        best.setdefault((f[2], f[3]), f)
    found = list(best.values())[:top]
    query = word if word is not None else f"{len(token_ids or [])} token ids"
    if not found:
        return SearchResult([], query=query, table=hits_table)
    texts = m.token_texts()
    rows = torch.stack([f[4] for f in found])  # kept from the loop: no layer is read twice
    signs_t = torch.tensor([f[1] for f in found])[:, None]
    full = signs_t * project(m, rows, fold_norm)  # [hits, vocab], larger = better on side
    full_z = (full - full.mean(1, keepdim=True)) / full.std(1, correction=0, keepdim=True)
    id_t = torch.tensor(ids)
    hits = []
    for row, (k, sign, (layer, expert), i, _) in enumerate(found):
        mine = full[row, id_t]
        order = mine.argsort(descending=True)
        t = ids[int(order[0])]
        ranks = [int((full[row] > full[row, ids[int(j)]]).sum()) + 1 for j in order[:n_best]]
        hits.append(
            WeightHit(
                neuron=NeuronId(layer, i, expert),
                matrix=matrix,
                token=texts[t],
                token_id=t,
                score=sign * float(full[row, t]),
                zscore=sign * float(full_z[row, t]),
                vocab_rank=ranks[0],
                side="top" if sign > 0 else "bottom",
                key=k,
                matched=tuple(texts[ids[int(j)]] for j in order[:n_best]),
                top_tokens=tuple(texts[j] for j in full[row].topk(show_tokens).indices.tolist()),
            )
        )
    return SearchResult(hits, query=query, table=hits_table)


def _neuron_vectors(
    m: Model, layer: int, matrix: str, fold_norm: bool, expert: int | None = None
) -> torch.Tensor:
    """Return :func:`residual_vectors` (of one ``expert`` in a mixture of experts), kept for
    a small model's next search (see KEEP_BYTES).

    Contiguous whether computed or read back, so that products round the same either way.
    """
    d = m.dims
    if d.n_layers * max(1, d.n_experts) * d.d_mlp * d.d_model * 4 > KEEP_BYTES:
        return residual_vectors(m, layer, matrix, fold_norm, expert)
    name = f"vectors-{matrix}-L{layer:03d}{expert_tag(expert)}" + ("-folded" if fold_norm else "")
    return cached_tensors(
        m,
        name,
        lambda: {"v": residual_vectors(m, layer, matrix, fold_norm, expert).contiguous()},
        {"v": ((d.d_mlp, d.d_model), torch.float32)},
        depends=(residual_vectors.__module__, "conceptvec.models.gguf_file", "gguf.quants"),
        disk=m.reader.is_quantized(m.mlp_place(matrix, layer, expert)[0]),  # dequantizing: slow
    )["v"]


def hits_table(hits: list[WeightHit]) -> str:
    """Return weight-search hits as a plain-text table, each with the neuron's own tokens."""
    lines = [
        f"{'rank':>4} {'neuron':<10} {'side':<6} {'token':<16} {'score':>8} {'z':>7} "
        f"{'vocab rank':>10}  its tokens"
    ]
    for n, h in enumerate(hits, 1):
        lines.append(
            f"{n:>4} {str(h.neuron):<10} {h.side:<6} {show(h.token):<16} {h.score:>8.3f} "
            f"{h.zscore:>7.2f} {h.vocab_rank:>10}  {', '.join(show(t) for t in h.top_tokens[:6])}"
        )
    return "\n".join(lines)
