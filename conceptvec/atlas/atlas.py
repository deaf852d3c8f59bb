"""``Atlas``: a finished (or partial) atlas folder, read without the model.

>>> atlas = Atlas("atlas/smollm2-135m")  # made by `conceptvec map smollm2-135m`
>>> atlas.neuron("L29.883", matrix="down").top_tokens[:3]
[' light', 'light', ' Light']
>>> hit = atlas.search("dog")[0]
>>> str(hit.neuron), hit.matrix, hit.token
('L29.808', 'down', 'dog')
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conceptvec import files
from conceptvec.decoding import Decoding, TokenScore
from conceptvec.errors import AtlasError
from conceptvec.neurons import NeuronId, check_matrix, parse_layers
from conceptvec.results import Result, SearchResult
from conceptvec.tokens import show

from . import store

if TYPE_CHECKING:
    from .cards import ActivationPart


@dataclass(frozen=True)
class AtlasHit(Result):
    """One neuron whose top (or bottom) tokens hold a searched token."""

    neuron: NeuronId
    matrix: str
    rank: int
    """Place of the best matching token in the neuron's list, counted from 1 (1 = its top
    token), as the CLI, :meth:`to_dict` and the weight search count."""
    token: str
    score: float
    matches: int = 1
    """How many of the neuron's listed tokens match the query."""

    def __str__(self) -> str:
        return (
            f"{self.neuron} {self.matrix}: {show(self.token)} at rank {self.rank} "
            f"(score {self.score:.3f}, {self.matches} matching)"
        )

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (``rank`` counted from 1: 1 = the neuron's top token)."""
        return {
            "neuron": str(self.neuron),
            "matrix": self.matrix,
            "rank": self.rank,
            "token": self.token,
            "score": self.score,
            "matches": self.matches,
        }


def normalize(text: str) -> str:
    """Return the form tokens and queries are matched in: stripped and case-folded."""
    return text.strip().casefold()


def match_ids(texts, query: str | list[str], exact: bool = False) -> list[int]:
    """Return the ids whose token text in ``texts`` matches ``query`` (one word or several).

    Matching ignores case and surrounding spaces unless ``exact``.
    """
    queries = [query] if isinstance(query, str) else list(query)
    key = (lambda t: t) if exact else normalize
    wanted = {key(q) for q in queries}
    if not queries or "" in wanted:
        raise AtlasError(
            f"cannot search for {query!r}: give a word or word piece with at least one "
            "non-space character"
        )
    return [i for i, t in enumerate(texts) if key(t) in wanted]


class Atlas:
    """An atlas folder written by :func:`conceptvec.atlas.build_atlas` (``conceptvec map``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise AtlasError(
                f"{self.path} is not a folder; give the --out folder of `conceptvec map`"
            )
        manifest_path = self.path / store.MANIFEST
        self.manifest: dict[str, Any] = store.check_manifest(
            store.read_json(manifest_path, "manifest"), manifest_path
        )
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    # --------------------------------------------------------------------- facts
    @property
    def model_name(self) -> str:
        """The model the atlas was made from (as the user named it)."""
        return self.manifest["model_name"]

    @property
    def k(self) -> int:
        """How many top and bottom tokens each neuron keeps."""
        return int(self.manifest["k"])

    @property
    def dims(self) -> dict[str, int]:
        """``n_layers, d_model, d_mlp, vocab`` of the model."""
        return self.manifest["dims"]

    @property
    def layers(self) -> list[int]:
        """Layers with at least one shard."""
        return sorted({e["layer"] for e in self.manifest["shards"].values()})

    @property
    def matrices(self) -> list[str]:
        """Matrices with at least one shard (``up``, ``gate``, ``down``)."""
        present = {e["matrix"] for e in self.manifest["shards"].values()}
        return [m for m in ("up", "gate", "down") if m in present]

    @property
    def complete(self) -> bool:
        """False when the run that made the atlas stopped early (resume it with ``map``)."""
        return bool(self.manifest.get("complete"))

    @cached_property
    def vocab(self) -> list[str]:
        """Display text of every token id (``vocab.json``)."""
        path = self.path / store.VOCAB
        fix = "remake the atlas"
        data = b""
        if path.exists() or path.is_symlink():
            store.shard_file(self.path, {"file": store.VOCAB})  # no symlink out of the folder
            data = files.read_bounded(path, store.CorruptAtlasError, fix)
        if store.sha256_bytes(data) != self.manifest.get("vocab_sha256"):
            raise store.CorruptAtlasError(
                f"{path} is missing or does not match its hash in the manifest; {fix}"
            )
        try:
            vocab = json.loads(data)
        except (ValueError, RecursionError):
            vocab = None
        if not isinstance(vocab, list) or len(vocab) != self.dims["vocab"]:
            raise store.CorruptAtlasError(
                f"{path} does not hold the {self.dims['vocab']} token texts the manifest "
                f"declares; {fix}"
            )
        return [str(t) for t in vocab]

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        return (
            f"Atlas({self.model_name!r}, {len(self.layers)} layers x {self.matrices}, "
            f"k={self.k}, {state}, path={str(self.path)!r})"
        )

    # -------------------------------------------------------------------- shards
    def shard(self, layer: int, matrix: str, expert: int | None = None) -> dict[str, torch.Tensor]:
        """Return one layer's ``top_ids, top_values, bottom_ids, bottom_values`` ``[d_mlp, k]``
        (of one ``expert`` in a mixture-of-experts model's atlas).

        The file's sha256 is checked against the manifest on first read.
        """
        name = store.shard_name(layer, matrix, expert)
        if name not in self._shards:
            entry = self.manifest["shards"].get(name)
            if entry is None:
                have = ", ".join(self.matrices) or "none"
                flag = f"--matrices {matrix}" if layer in self.layers else f"--layers {layer}"
                if layer not in self.layers and matrix not in self.matrices:
                    flag += f" --matrices {matrix}"
                of = "" if expert is None else f" expert {expert} of"
                raise AtlasError(
                    f"this atlas has no {matrix} shard for{of} layer {layer} (layers "
                    f"{_ranges(self.layers)}, matrices {have}); map it with `conceptvec map "
                    f"{flag}`"
                )
            self._shards[name] = store.decode_shard(
                store.shard_file(self.path, entry),
                entry["sha256"],
                (self.dims["d_mlp"], self.k),
                self.dims["vocab"],
            )
        return self._shards[name]

    def shards(self, matrix: str | None = None) -> Iterator[tuple[int, str, dict]]:
        """Yield ``(layer, matrix, shard)`` for every shard, in layer order (a mixture of
        experts' atlas has a shard per expert: see :meth:`expert_shards`)."""
        for layer, _, m, shard in self.expert_shards(matrix):
            yield layer, m, shard

    def expert_shards(
        self, matrix: str | None = None
    ) -> Iterator[tuple[int, int | None, str, dict]]:
        """Yield ``(layer, expert, matrix, shard)`` for every shard, in layer order (expert
        None in a dense model's atlas)."""
        for entry in sorted(self.manifest["shards"].values(), key=lambda e: e["layer"]):
            if matrix is None or entry["matrix"] == matrix:
                layer, m, expert = entry["layer"], entry["matrix"], entry.get("expert")
                yield layer, expert, m, self.shard(layer, m, expert)

    def verify(self) -> list[str]:
        """Return the names of shards whose files are missing or do not match their hash."""
        bad = []
        for name, entry in self.manifest["shards"].items():
            path = store.shard_file(self.path, entry)
            if not path.is_file() or store.sha256_file(path) != entry["sha256"]:
                bad.append(name)
        return bad

    # ------------------------------------------------------------------- lookups
    @cached_property
    def activations(self) -> ActivationPart | None:
        """The activation part (:class:`~conceptvec.atlas.cards.ActivationPart`), or None
        when the atlas was mapped without ``--corpus``."""
        from .cards import ActivationPart
        from .corpus_pass import read_manifest

        if read_manifest(self.path) is None:
            return None
        return ActivationPart(self.path, self.manifest, self.vocab)

    def neuron(self, neuron: str | NeuronId, matrix: str = "down") -> Decoding:
        """Return one neuron's card: its stored top and bottom tokens (a :class:`Decoding`)
        and, with an activation part, its exemplars and statistics
        (:class:`~conceptvec.atlas.cards.NeuronCard`)."""
        from .cards import card

        return card(self._decoding(neuron, matrix), self.activations)

    def _decoding(self, neuron: str | NeuronId, matrix: str) -> Decoding:
        d = self.dims
        n = NeuronId.parse(neuron).check(d["n_layers"], d["d_mlp"], d.get("n_experts", 0))
        matrix = check_matrix(matrix)
        s = self.shard(n.layer, matrix, n.expert)
        vocab = self.vocab

        def tokens(ids, values):
            return [
                TokenScore(int(i), vocab[int(i)], float(v))
                for i, v in zip(ids[n.index].tolist(), values[n.index].tolist())
            ]

        return Decoding(
            model=self.model_name,
            neuron=n,
            matrix=matrix,
            top=tokens(s["top_ids"], s["top_values"]),
            bottom=tokens(s["bottom_ids"], s["bottom_values"]),
            recipe=dict(self.manifest["recipe"]["down" if matrix == "down" else "up"]),
        )

    def token_ids(self, query: str | list[str], exact: bool = False) -> list[int]:
        """Return the ids of tokens matching ``query`` (case- and space-insensitive unless exact)."""
        return match_ids(self.vocab, query, exact)

    def search(
        self,
        query: str | list[str],
        *,
        matrix: str | None = None,
        top: int | None = 50,
        exact: bool = False,
        bottom: bool = False,
        max_rank: int | None = None,
        layers: str | list[int] | None = None,
    ) -> SearchResult:
        """Return the neurons whose top tokens hold ``query``, best first.

        Matching ignores case and surrounding spaces (``"dog"`` finds ``" dog"``, ``"Dog"``)
        unless ``exact``. Neurons rank by where the token sits in their list (top-1 first),
        then by how many listed tokens match, then by score. ``bottom`` searches the bottom
        tokens instead; ``max_rank`` keeps only hits within the first ``max_rank`` places;
        ``layers`` searches only those layers (each must be in the atlas).
        """
        ids = self.token_ids(query, exact)
        if not ids:
            raise AtlasError(
                f"no token in this atlas's vocabulary reads {query!r}"
                + ("" if exact else " (ignoring case and spaces)")
                + "; try another spelling or a word piece"
            )
        want = torch.tensor(ids, dtype=torch.int32)
        side = "bottom" if bottom else "top"
        hits: list[AtlasHit] = []
        layers = parse_layers(layers)  # "0-3,7" as on the command line
        if layers is not None:
            missing = sorted(set(layers) - set(self.layers))
            if missing:
                raise AtlasError(
                    f"this atlas has no layer {missing[0]} (it holds layers "
                    f"{_ranges(self.layers)}); map it with `conceptvec map --layers "
                    f"{_ranges(missing)}`, or search layers it holds"
                )
        for layer, expert, m, s in self.expert_shards(check_matrix(matrix) if matrix else None):
            if layers is not None and layer not in layers:
                continue
            ids_k, vals_k = s[f"{side}_ids"], s[f"{side}_values"]
            if max_rank is not None:
                ids_k, vals_k = ids_k[:, :max_rank], vals_k[:, :max_rank]
            found = torch.isin(ids_k, want)
            rows = found.any(dim=1).nonzero().flatten()
            if not len(rows):
                continue
            first = found[rows].int().argmax(dim=1)
            count = found[rows].sum(dim=1)
            for r, f, c in zip(rows.tolist(), first.tolist(), count.tolist()):
                tok = int(ids_k[r, f])
                hits.append(
                    AtlasHit(
                        NeuronId(layer, r, expert),
                        m,
                        f + 1,
                        self.vocab[tok],
                        float(vals_k[r, f]),
                        c,
                    )
                )
        sign = 1.0 if bottom else -1.0
        hits.sort(key=lambda h: (h.rank, -h.matches, sign * h.score))
        shown = hits if top is None else hits[:top]
        return SearchResult(shown, query=str(query), table=self.search_table)

    def search_table(self, hits: list[AtlasHit]) -> str:
        """Return ``hits`` as a plain-text table (what ``conceptvec search --atlas`` prints)."""
        lines = [f"{'neuron':<10} {'matrix':<6} {'rank':>4} {'token':<16} {'score':>8}  top tokens"]
        for h in hits:
            tops = self._decoding(h.neuron, h.matrix).top_tokens[:5]
            lines.append(
                f"{str(h.neuron):<10} {h.matrix:<6} {h.rank:>4} {show(h.token):<16} "
                f"{h.score:>8.3f}  {' '.join(show(t) for t in tops)}"
            )
        return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    out, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(out)
