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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..decode import project, residual_vectors
from ..errors import AtlasError
from ..models import Model, load
from ..neurons import NeuronId, check_matrix
from ..tokens import show, token_text
from .atlas import match_ids
from .head import folded_rows


@dataclass(frozen=True)
class WeightHit:
    """A neuron ranked by the score of a searched token in its projection."""

    neuron: NeuronId
    matrix: str
    token: str
    token_id: int
    score: float
    zscore: float
    """The score in standard deviations of the neuron's projection over the vocabulary."""
    vocab_rank: int
    """1 when ``token`` is the neuron's top (or, for bottom searches, bottom) token."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "neuron": str(self.neuron),
            "matrix": self.matrix,
            "token": self.token,
            "token_id": self.token_id,
            "score": self.score,
            "zscore": self.zscore,
            "vocab_rank": self.vocab_rank,
        }


def matching_tokens(model: Model, word: str, exact: bool = False) -> list[int]:
    """Return the ids of tokens that read ``word`` (ignoring case and spaces unless exact)."""
    ids = match_ids(token_text(model.tokenizer).many(range(model.dims.vocab)), word, exact)
    if not ids:
        pieces = ""
        if model.tokenizer is not None:
            split = model.tokenizer.tokenize(" " + word.strip())
            pieces = f" (it splits into {len(split)} tokens: {split})" if len(split) > 1 else ""
        raise AtlasError(
            f"no single token reads {word!r}{pieces}; search one of its pieces instead"
        )
    return ids


def search_weights(
    model: Any,
    word: str,
    *,
    matrix: str = "down",
    top: int = 20,
    exact: bool = False,
    bottom: bool = False,
    layers: list[int] | None = None,
    fold_norm: bool = True,
    by: str = "zscore",
) -> list[WeightHit]:
    """Return the ``top`` neurons whose projection scores ``word`` highest (lowest if bottom).

    ``by="zscore"`` (default) ranks by the token's score in standard deviations of each
    neuron's own projection; ``by="score"`` ranks by the raw score (one matrix-vector
    product per layer, faster for large models on CPU).
    """
    if by not in ("zscore", "score"):
        raise AtlasError(f"unknown ranking {by!r}; use zscore or score")
    m = model if isinstance(model, Model) else load(model)
    matrix = check_matrix(matrix, m.spec.gated)
    n_layers = m.dims.n_layers
    for layer in layers or []:
        NeuronId(layer, 0).check(n_layers, m.dims.d_mlp)
    ids = matching_tokens(m, word, exact)
    folded = folded_rows(m, ids, fold_norm).T  # [d_model, t]
    mu, cov = head_moments(m, fold_norm) if by == "zscore" else (None, None)
    sign = -1.0 if bottom else 1.0
    # (ranking key, score, layer, index, token id, the neuron's vector) per candidate
    found: list[tuple[float, float, int, int, int, torch.Tensor]] = []
    for layer in layers if layers is not None else range(n_layers):
        v = residual_vectors(m, layer, matrix, fold_norm)
        scores = sign * (v @ folded)  # [d_mlp, t]: one product per layer
        key = scores
        if cov is not None:
            sd = ((v @ cov) * v).sum(1).clamp_min(1e-30).sqrt()
            key = (scores - sign * (v @ mu)[:, None]) / sd[:, None]
        best, which = key.max(dim=1)
        for i in best.topk(min(top, len(best))).indices.tolist():
            j = int(which[i])
            found.append((float(best[i]), float(scores[i, j]), layer, i, ids[j], v[i].clone()))
    found.sort(key=lambda x: -x[0])
    found = found[:top]
    if not found:
        return []
    text = token_text(m.tokenizer)
    rows = torch.stack([f[5] for f in found])  # kept from the loop: no layer is read twice
    full = sign * project(m, rows, fold_norm)  # [top, vocab]
    full_z = (full - full.mean(1, keepdim=True)) / full.std(1, correction=0, keepdim=True)
    return [
        WeightHit(
            NeuronId(layer, i),
            matrix,
            text(t),
            t,
            sign * s,
            sign * float(full_z[row, t]),
            int((full[row] > full[row, t]).sum()) + 1,
        )
        for row, (_, s, layer, i, t, _) in enumerate(found)
    ]


def head_moments(model: Model, fold_norm: bool, chunk: int = 16384):
    """Return ``(mu [d_model], cov [d_model, d_model])`` of the folded unembedding rows."""
    d, vocab = model.dims.d_model, model.dims.vocab
    total = torch.zeros(d, dtype=torch.float64)
    second = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, vocab, chunk):
        w = folded_rows(model, slice(start, start + chunk), fold_norm)
        total += w.sum(0, dtype=torch.float64)
        second += (w.T @ w).double()
    mu = total / vocab
    return mu.float(), (second / vocab - torch.outer(mu, mu)).float()


def hits_table(hits: list[WeightHit]) -> str:
    """Return weight-search hits as a plain-text table."""
    lines = [f"{'neuron':<10} {'matrix':<6} {'token':<16} {'score':>8} {'z':>7} {'rank':>7}"]
    for h in hits:
        lines.append(
            f"{str(h.neuron):<10} {h.matrix:<6} {show(h.token):<16} {h.score:>8.3f} "
            f"{h.zscore:>7.2f} {h.vocab_rank:>7}"
        )
    return "\n".join(lines)
