"""Do a neuron's two views agree? The agreement score, and search by context.

**Agreement** (defined in ``docs/atlas.md``). A neuron's *firing side* is the sign of its
strongest activation over the corpus (``+`` when its highest value is at least as far from
zero as its lowest, else ``-``); its *exemplars* are the ``k`` contexts on that side whose
activation has that sign.

- ``down`` column (what it writes): the hidden activation ``a`` multiplies the column, so the
  logits it raises are the top decoded tokens when ``a > 0`` and the bottom ones when
  ``a < 0``. Score = share of exemplars whose **next** token (the token after the firing
  one, in the same sequence) is among those decoded tokens.
- ``up`` row (what it reads, with sign): ``a`` has the sign of ``up(x)`` where the gate is
  open, so the side's decoded tokens are the top ones for ``+`` and the bottom ones for
  ``-``. Score = share of exemplars whose **current** (firing) token is among them.
- ``gate`` row: the gate opens for large positive ``gate(x)`` whatever the sign of ``a``, so
  its decoded tokens are always the top ones; current tokens, as for ``up``.

Tokens are compared by id, against the atlas's ``k`` decoded tokens. Exemplars without a
next token (the end of a sequence) are not counted; a neuron with none counted has no score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from conceptvec.errors import AtlasError
from conceptvec.neurons import NeuronId, check_matrix, parse_layers
from conceptvec.results import Result, SearchResult
from conceptvec.tokens import show

if TYPE_CHECKING:
    from conceptvec.atlas.atlas import Atlas


@dataclass(frozen=True)
class AgreementHit(Result):
    """One neuron's agreement between what it writes (or reads) and what it fires on."""

    neuron: NeuronId
    matrix: str
    score: float
    """Share of counted exemplars whose next (down) or current (up, gate) token is decoded."""
    matched: int
    counted: int
    sign: int
    """The firing side: +1 or -1."""

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "neuron": str(self.neuron),
            "matrix": self.matrix,
            "score": self.score,
            "matched": self.matched,
            "counted": self.counted,
            "sign": self.sign,
        }

    def __str__(self) -> str:
        return (
            f"{self.neuron} {self.matrix}: agreement {self.score:.2f} ({self.matched}/"
            f"{self.counted}, fires {'+' if self.sign > 0 else '-'})"
        )


def layer_agreement(atlas: Atlas, layer: int, matrix: str) -> dict[str, torch.Tensor]:
    """Return ``matched``, ``counted`` (``[d_mlp]`` int) and ``sign`` (+1/-1) for one layer."""
    part = atlas.activations
    if part is None:
        raise AtlasError(
            f"{atlas.path} has no activation part; add one with `conceptvec map {atlas.path} "
            "--corpus SOURCE`"
        )
    t = part.layer(layer)
    w = int(part.settings["window"])
    shard = atlas.shard(layer, matrix)
    positive = t["top_values"][:, 0] >= -t["bottom_values"][:, 0]  # [d]
    sign = torch.where(positive, 1, -1)

    def side(name_pos: str, name_neg: str) -> torch.Tensor:
        p, n = t[name_pos], t[name_neg]
        shape = [-1] + [1] * (p.dim() - 1)
        return torch.where(positive.view(shape), p, n)

    values = side("top_values", "bottom_values")  # [d, k]
    ids = side("top_window_ids", "bottom_window_ids")  # [d, k, W]
    look = ids[:, :, w + 1] if matrix == "down" and ids.shape[2] > w + 1 else ids[:, :, w]
    if matrix == "down" and ids.shape[2] <= w + 1:
        raise AtlasError("agreement of down columns needs a context window of at least 1")
    if matrix == "gate":
        decoded = shard["top_ids"]
    else:
        decoded = torch.where(positive.view(-1, 1), shard["top_ids"], shard["bottom_ids"])
    right_sign = (values * sign.view(-1, 1)) > 0
    counted = right_sign & (look >= 0)
    hit = (look.unsqueeze(-1) == decoded.unsqueeze(1)).any(-1) & counted
    return {"matched": hit.sum(1), "counted": counted.sum(1), "sign": sign}


def rank_agreement(
    atlas: Atlas,
    *,
    matrix: str = "down",
    layers: str | list[int] | None = None,
    top: int | None = 50,
    min_counted: int = 1,
) -> SearchResult:
    """Return neurons ranked by agreement (highest first; ties: more exemplars counted first,
    then layer and index), over the layers of the activation part (or ``layers``)."""
    matrix = check_matrix(matrix)
    part = atlas.activations
    have = part.layers if part is not None else []
    wanted = parse_layers(layers)
    chosen = have if wanted is None else [x for x in wanted if x in have]
    if part is None or not chosen:
        raise AtlasError(
            f"{atlas.path} has no activation statistics for layers {wanted or 'any'}; add them "
            f"with `conceptvec map {atlas.path} --corpus SOURCE`"
        )
    hits: list[AgreementHit] = []
    for layer in chosen:
        r = layer_agreement(atlas, layer, matrix)
        ok = (r["counted"] >= max(min_counted, 1)).nonzero().flatten().tolist()
        m, c, s = r["matched"].tolist(), r["counted"].tolist(), r["sign"].tolist()
        hits += [
            AgreementHit(NeuronId(layer, i), matrix, m[i] / c[i], m[i], c[i], s[i]) for i in ok
        ]
    hits.sort(key=lambda h: (-h.score, -h.counted, h.neuron.layer, h.neuron.index))
    return SearchResult(hits if top is None else hits[:top], query="agreement", table=_table)


def _table(hits: list[AgreementHit]) -> str:
    lines = [f"{'neuron':<10} {'matrix':<6} {'agreement':>9} {'matched':>9}  side"]
    for h in hits:
        lines.append(
            f"{str(h.neuron):<10} {h.matrix:<6} {h.score:>9.2f} {f'{h.matched}/{h.counted}':>9}"
            f"  {'+' if h.sign > 0 else '-'}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ search by context
@dataclass(frozen=True)
class ContextHit(Result):
    """A neuron with exemplars whose context holds a searched word."""

    neuron: NeuronId
    count: int
    """Exemplars (top and bottom) whose context holds the word."""
    value: float
    """The strongest (largest in magnitude) activation among them."""
    snippet: str

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "neuron": str(self.neuron),
            "count": self.count,
            "value": self.value,
            "snippet": self.snippet,
        }

    def __str__(self) -> str:
        return f"{self.neuron}: {self.count} exemplars, {self.value:+.3f}  {self.snippet}"


def search_contexts(
    atlas: Atlas, word: str, *, layers: str | list[int] | None = None, top: int | None = 50
) -> SearchResult:
    """Return neurons whose exemplars' contexts hold ``word`` (case-insensitive, whole word),
    most such exemplars first, then by the strongest activation among them."""
    query = word.strip().casefold()
    if not query:
        raise AtlasError("the search word is empty; give a word, e.g. Caesar")
    part = atlas.activations
    if part is None:
        raise AtlasError(
            f"{atlas.path} has no activation part; add one with `conceptvec map {atlas.path} "
            "--corpus SOURCE`"
        )
    vocab = atlas.vocab
    pieces = [i for i, t in enumerate(vocab) if _piece(t.strip().casefold(), query)]
    if not pieces:
        return SearchResult([], query=word, table=_context_table)
    want = torch.tensor(pieces, dtype=torch.int32)
    pattern = re.compile(r"(?<!\w)" + re.escape(query) + r"(?!\w)")
    wanted = parse_layers(layers)
    hits: list[ContextHit] = []
    for layer in part.layers:
        if wanted is not None and layer not in wanted:
            continue
        t = part.layer(layer)
        found: dict[int, list[tuple[float, str]]] = {}
        for side in ("top", "bottom"):
            ids = t[f"{side}_window_ids"]
            cand = torch.isin(ids, want).any(-1).nonzero().tolist()
            for n, s in cand:
                row = ids[n, s].tolist()
                text = "".join(vocab[i] for i in row if i >= 0)
                if pattern.search(text.casefold()):
                    found.setdefault(n, []).append((float(t[f"{side}_values"][n, s]), side))
        for n, items in found.items():
            value, side = max(items, key=lambda x: abs(x[0]))
            slot = int((t[f"{side}_values"][n] == value).nonzero()[0])
            snippet = part.exemplars(layer, n, side)[slot].snippet()
            hits.append(ContextHit(NeuronId(layer, n), len(items), value, snippet))
    hits.sort(key=lambda h: (-h.count, -abs(h.value), h.neuron.layer, h.neuron.index))
    return SearchResult(hits if top is None else hits[:top], query=word, table=_context_table)


def _piece(token: str, query: str) -> bool:
    """True for a token that can be part of ``query`` as written in a context."""
    return bool(token) and (token == query or (len(token) >= 2 and token in query))


def _context_table(hits: list[ContextHit]) -> str:
    lines = [f"{'neuron':<10} {'count':>5} {'value':>9}  context"]
    for h in hits:
        lines.append(f"{str(h.neuron):<10} {h.count:>5} {h.value:>+9.3f}  {show(h.snippet)}")
    return "\n".join(lines)
