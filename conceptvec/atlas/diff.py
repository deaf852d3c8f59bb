"""Compare two atlases of same-shaped models: how many neurons kept their top token.

The decoding paper reports that 75.4% of Llama-3.1-8B's neurons have the same top token in
the base and instruct models; ``diff_atlases(base, instruct)`` measures such a figure, per
layer and matrix, and lists the neurons whose top tokens changed most (lowest overlap of
their top-k token sets). Base vs. an unlearned checkpoint works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conceptvec.errors import AtlasError
from conceptvec.neurons import NeuronId
from conceptvec.results import Result
from conceptvec.tokens import show

from .atlas import Atlas


@dataclass
class LayerDiff:
    """One layer and matrix: the share of neurons with the same top-1 and mean top-k overlap."""

    layer: int
    matrix: str
    same_top1: float
    overlap: float
    neurons: int
    same_top1_count: int = 0
    """How many of the layer's ``neurons`` have the same top-1 token."""
    unchanged: int = 0
    """How many have the same top-1 token and the same set of top-k tokens."""
    expert: int | None = None
    """The expert, in a mixture-of-experts model's atlases (None when dense)."""

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "layer": self.layer,
            **({} if self.expert is None else {"expert": self.expert}),
            "matrix": self.matrix,
            "same_top1": self.same_top1,
            "same_top1_count": self.same_top1_count,
            "unchanged": self.unchanged,
            "mean_topk_overlap": self.overlap,
            "neurons": self.neurons,
        }


@dataclass
class NeuronChange:
    """A neuron whose top tokens differ between the atlases."""

    neuron: NeuronId
    matrix: str
    overlap: float
    """Share of the top-k tokens the two atlases have in common (0 = none)."""
    top_a: list[str]
    top_b: list[str]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "neuron": str(self.neuron),
            "matrix": self.matrix,
            "topk_overlap": self.overlap,
            "top_a": self.top_a,
            "top_b": self.top_b,
        }


@dataclass
class AtlasDiff(Result):
    """The result of :func:`diff_atlases`."""

    a: str
    b: str
    k: int
    layers: list[LayerDiff] = field(default_factory=list)
    changed: list[NeuronChange] = field(default_factory=list)

    def same_top1(self, matrix: str | None = None) -> float:
        """Return the share of neurons (over all compared layers) with the same top-1 token."""
        same, total = self.same_top1_count(matrix)
        return same / total if total else float("nan")

    def same_top1_count(self, matrix: str | None = None) -> tuple[int, int]:
        """Return ``(neurons with the same top-1 token, neurons compared)``."""
        rows = [r for r in self.layers if matrix is None or r.matrix == matrix]
        return sum(r.same_top1_count for r in rows), sum(r.neurons for r in rows)

    @property
    def unchanged(self) -> bool:
        """True when every compared neuron kept its top-1 token and its top-k token set."""
        return all(r.unchanged == r.neurons for r in self.layers)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (what ``conceptvec diff --json`` prints)."""
        matrices = sorted({r.matrix for r in self.layers})
        same, total = self.same_top1_count()
        return {
            "a": self.a,
            "b": self.b,
            "k": self.k,
            "unchanged": self.unchanged,
            "same_top1": self.same_top1(),
            "same_top1_count": same,
            "neurons": total,
            "same_top1_by_matrix": {m: self.same_top1(m) for m in matrices},
            "layers": [r.to_dict() for r in self.layers],
            "changed_most": [c.to_dict() for c in self.changed],
        }

    def __str__(self) -> str:
        same, total = self.same_top1_count()
        lines = [f"A: {self.a}", f"B: {self.b}"]
        if self.unchanged:
            lines.append(
                f"nothing changed: all {total} neurons keep their top-1 token and their "
                f"top-{self.k} tokens"
            )
            return "\n".join(lines)
        lines += [
            f"same top-1 token: {same}/{total} neurons ({_percent(same, total)}; top-{self.k} "
            "compared)",
            "",
            f"{'layer':>5} {'matrix':<6} {'same top-1':>15} {'top-k overlap':>13}",
        ]
        for r in self.layers:
            count = f"{r.same_top1_count}/{r.neurons}"
            lines.append(f"{r.layer:>5} {r.matrix:<6} {count:>15} {100 * r.overlap:>12.1f}%")
        if self.changed:
            lines += ["", "changed most:"]
            for c in self.changed:
                a = " ".join(show(t) for t in c.top_a[:4])
                b = " ".join(show(t) for t in c.top_b[:4])
                lines.append(
                    f"  {str(c.neuron):<10} {c.matrix:<5} {100 * c.overlap:>5.1f}%  {a}  ->  {b}"
                )
        return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    """Return ``part/whole`` as a percentage that reads 100% or 0% only when it is exactly so."""
    if not whole:
        return "n/a"
    p = 100 * part / whole
    if 0 < part < whole:
        p = min(max(p, 0.01), 99.99)
    return f"{p:.2f}%"


def _check_comparable(a: Atlas, b: Atlas) -> None:
    ma, mb = a.manifest, b.manifest
    if ma["dims"] != mb["dims"]:
        raise AtlasError(
            f"the atlases come from models of different shapes ({ma['dims']} vs {mb['dims']}); "
            "diff compares checkpoints of one architecture"
        )
    if ma.get("vocab_sha256") != mb.get("vocab_sha256"):
        raise AtlasError(
            "the atlases use different tokenizers (their vocab.json differ), so token ids "
            "cannot be compared; diff checkpoints that share a tokenizer"
        )
    if ma.get("recipe") != mb.get("recipe"):
        raise AtlasError(
            "the atlases were decoded with different recipes (norm folding); remake one with "
            "the other's settings"
        )


def diff_atlases(a: Atlas | str | Path, b: Atlas | str | Path, *, top: int = 20) -> AtlasDiff:
    """Return per-layer agreement of two atlases and the ``top`` neurons that changed most."""
    a = a if isinstance(a, Atlas) else Atlas(a)
    b = b if isinstance(b, Atlas) else Atlas(b)
    _check_comparable(a, b)
    k = min(a.k, b.k)
    common = sorted(set(a.manifest["shards"]) & set(b.manifest["shards"]))
    if not common:
        raise AtlasError("the atlases have no layer and matrix in common; map the same ones")
    out = AtlasDiff(a=f"{a.model_name} ({a.path})", b=f"{b.model_name} ({b.path})", k=k)
    worst: list[tuple[float, int, int, str, int | None]] = []
    for name in common:
        entry = a.manifest["shards"][name]
        layer, matrix, expert = entry["layer"], entry["matrix"], entry.get("expert")
        ia = a.shard(layer, matrix, expert)["top_ids"][:, :k].long()
        ib = b.shard(layer, matrix, expert)["top_ids"][:, :k].long()
        same = (ia[:, 0] == ib[:, 0]).float()
        # |A ∩ B| per row: compare every pair of the two k-lists (ids within a list are unique).
        overlap = (ia[:, :, None] == ib[:, None, :]).any(-1).float().sum(-1) / k
        n_same = int(same.sum())
        out.layers.append(
            LayerDiff(
                layer,
                matrix,
                n_same / len(same),
                float(overlap.mean()),
                len(same),
                same_top1_count=n_same,
                unchanged=int(((overlap == 1) & (same == 1)).sum()),
                expert=expert,
            )
        )
        key = overlap + same * 1e-3  # among equal overlaps, a changed top-1 counts as more change
        idx = key.topk(min(top, len(key)), largest=False).indices
        worst += [
            (float(overlap[i]), layer, i, matrix, expert) for i in idx.tolist() if overlap[i] < 1
        ]
    order = {"up": 0, "gate": 1, "down": 2}
    out.layers.sort(key=lambda r: (order[r.matrix], r.layer, r.expert or 0))
    worst.sort(key=lambda w: (w[0], -w[1]))
    for ov, layer, i, matrix, expert in worst[:top]:
        n = NeuronId(layer, i, expert)
        out.changed.append(
            NeuronChange(
                n,
                matrix,
                ov,
                a.neuron(n, matrix).top_tokens[:k],
                b.neuron(n, matrix).top_tokens[:k],
            )
        )
    return out
