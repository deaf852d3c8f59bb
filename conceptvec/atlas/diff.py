"""Compare two atlases of same-shaped models: how many neurons kept their top token.

The decoding paper reports that 75.4% of Llama-3.1-8B's neurons have the same top token in
the base and instruct models; ``diff_atlases(base, instruct)`` measures such a figure, per
layer and matrix, and lists the neurons whose top tokens changed most (lowest overlap of
their top-k token sets). Base vs. an unlearned checkpoint works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import AtlasError
from ..neurons import NeuronId
from ..tokens import show
from .atlas import Atlas


@dataclass
class LayerDiff:
    """One layer and matrix: the share of neurons with the same top-1 and mean top-k overlap."""

    layer: int
    matrix: str
    same_top1: float
    overlap: float
    neurons: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "layer": self.layer,
            "matrix": self.matrix,
            "same_top1": self.same_top1,
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

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "neuron": str(self.neuron),
            "matrix": self.matrix,
            "topk_overlap": self.overlap,
            "top_a": self.top_a,
            "top_b": self.top_b,
        }


@dataclass
class AtlasDiff:
    """The result of :func:`diff_atlases`."""

    a: str
    b: str
    k: int
    layers: list[LayerDiff] = field(default_factory=list)
    changed: list[NeuronChange] = field(default_factory=list)

    def same_top1(self, matrix: str | None = None) -> float:
        """Return the share of neurons (over all compared layers) with the same top-1 token."""
        rows = [r for r in self.layers if matrix is None or r.matrix == matrix]
        total = sum(r.neurons for r in rows)
        return sum(r.same_top1 * r.neurons for r in rows) / total if total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (what ``conceptvec diff --json`` prints)."""
        matrices = sorted({r.matrix for r in self.layers})
        return {
            "a": self.a,
            "b": self.b,
            "k": self.k,
            "same_top1": self.same_top1(),
            "same_top1_by_matrix": {m: self.same_top1(m) for m in matrices},
            "layers": [r.to_dict() for r in self.layers],
            "changed_most": [c.to_dict() for c in self.changed],
        }

    def __str__(self) -> str:
        lines = [
            f"A: {self.a}",
            f"B: {self.b}",
            f"same top-1 token: {100 * self.same_top1():.1f}% of neurons (top-{self.k} compared)",
            "",
            f"{'layer':>5} {'matrix':<6} {'same top-1':>10} {'top-k overlap':>13}",
        ]
        for r in self.layers:
            lines.append(
                f"{r.layer:>5} {r.matrix:<6} {100 * r.same_top1:>9.1f}% {100 * r.overlap:>12.1f}%"
            )
        if self.changed:
            lines += ["", "changed most:"]
            for c in self.changed:
                a = " ".join(show(t) for t in c.top_a[:4])
                b = " ".join(show(t) for t in c.top_b[:4])
                lines.append(
                    f"  {str(c.neuron):<10} {c.matrix:<5} {100 * c.overlap:>5.1f}%  {a}  ->  {b}"
                )
        return "\n".join(lines)

    def plot(self):
        """Return a plotly figure: share of neurons with the same top-1 token, per layer."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for m in sorted({r.matrix for r in self.layers}):
            rows = [r for r in self.layers if r.matrix == m]
            fig.add_trace(
                go.Scatter(x=[r.layer for r in rows], y=[r.same_top1 for r in rows], name=m)
            )
        fig.update_layout(
            title="Neurons with the same top-1 token",
            xaxis_title="layer",
            yaxis_title="share of neurons",
            yaxis_range=[0, 1],
        )
        return fig


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


def diff_atlases(a: Atlas | str, b: Atlas | str, *, top: int = 20) -> AtlasDiff:
    """Return per-layer agreement of two atlases and the ``top`` neurons that changed most."""
    a = a if isinstance(a, Atlas) else Atlas(a)
    b = b if isinstance(b, Atlas) else Atlas(b)
    _check_comparable(a, b)
    k = min(a.k, b.k)
    common = sorted(set(a.manifest["shards"]) & set(b.manifest["shards"]))
    if not common:
        raise AtlasError("the atlases have no layer and matrix in common; map the same ones")
    out = AtlasDiff(a=f"{a.model_name} ({a.path})", b=f"{b.model_name} ({b.path})", k=k)
    worst: list[tuple[float, int, int, str]] = []
    for name in common:
        entry = a.manifest["shards"][name]
        layer, matrix = entry["layer"], entry["matrix"]
        ia = a.shard(layer, matrix)["top_ids"][:, :k].long()
        ib = b.shard(layer, matrix)["top_ids"][:, :k].long()
        same = (ia[:, 0] == ib[:, 0]).float()
        # |A ∩ B| per row: compare every pair of the two k-lists (ids within a list are unique).
        overlap = (ia[:, :, None] == ib[:, None, :]).any(-1).float().sum(-1) / k
        out.layers.append(
            LayerDiff(layer, matrix, float(same.mean()), float(overlap.mean()), len(same))
        )
        key = overlap + same * 1e-3  # among equal overlaps, a changed top-1 counts as more change
        idx = key.topk(min(top, len(key)), largest=False).indices
        worst += [(float(overlap[i]), layer, i, matrix) for i in idx.tolist() if overlap[i] < 1]
    order = {"up": 0, "gate": 1, "down": 2}
    out.layers.sort(key=lambda r: (order[r.matrix], r.layer))
    worst.sort(key=lambda w: (w[0], -w[1]))
    for ov, layer, i, matrix in worst[:top]:
        n = NeuronId(layer, i)
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
