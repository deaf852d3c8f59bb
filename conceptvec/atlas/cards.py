"""One card, two views: what a neuron writes (its decoded tokens) beside what it fires on
(its exemplars over a corpus), read from an atlas folder's activation part.

For example, in a notebook (an atlas mapped with ``--corpus``)::

    card = Atlas("atlas-smollm2-135m").neuron("L29.1518")
    card.activity.bottom[0].snippet()   # the firing token in brackets, with its context
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptvec import files
from conceptvec.decoding import Decoding
from conceptvec.errors import AtlasError, CorruptAtlasError
from conceptvec.tokens import show

from . import store
from .corpus_pass import ACT_DIR, read_manifest


@dataclass
class Exemplar:
    """One context where a neuron fired: the tokens the model saw around the firing token,
    and the neuron's activation on each."""

    text: int
    """Index of the corpus text it came from."""
    position: int
    """Position of the firing token in that text."""
    value: float
    """The activation on the firing token (signed)."""
    tokens: list[str]
    values: list[float]
    ids: list[int]
    center: int
    """Index of the firing token in ``tokens``."""

    @property
    def token(self) -> str:
        """The firing token's text."""
        return self.tokens[self.center]

    def snippet(self, mark: tuple[str, str] = ("[", "]")) -> str:
        """Return ``left[token]right`` on one line (newlines shown as ``⏎``)."""
        flat = [t.replace("\n", "⏎").replace("\r", "").replace("\t", " ") for t in self.tokens]
        c = self.center
        return "".join(flat[:c]) + mark[0] + flat[c] + mark[1] + "".join(flat[c + 1 :])

    def to_dict(self) -> dict[str, Any]:
        """Return the exemplar as plain lists and numbers."""
        return {
            "text": self.text,
            "position": self.position,
            "value": self.value,
            "tokens": self.tokens,
            "values": self.values,
            "center": self.center,
        }


@dataclass
class Activity:
    """What one neuron fired on over the atlas's corpus."""

    corpus: dict[str, Any]
    """The corpus's identity: ``sha256``, ``texts``, ``tokens`` (and its source)."""
    top: list[Exemplar]
    """Highest activations, highest first."""
    bottom: list[Exemplar]
    """Lowest (most negative) activations, lowest first."""
    mean: float
    std: float
    density_above: float
    """Share of the corpus's tokens with activation above ``+threshold``."""
    density_below: float
    """Share of tokens below ``-threshold``."""
    threshold: float
    quantiles: dict[str, float] = field(default_factory=dict)
    """Estimated from a uniform sample of token positions (see ``docs/atlas.md``)."""

    @property
    def sign(self) -> int:
        """+1 when the neuron's strongest activation is positive, -1 when negative."""
        hi = self.top[0].value if self.top else 0.0
        lo = self.bottom[0].value if self.bottom else 0.0
        return 1 if hi >= -lo else -1

    def to_dict(self) -> dict[str, Any]:
        """Return the activity as plain dicts, lists and numbers."""
        return {
            "corpus": self.corpus,
            "top": [e.to_dict() for e in self.top],
            "bottom": [e.to_dict() for e in self.bottom],
            "mean": self.mean,
            "std": self.std,
            "density_above": self.density_above,
            "density_below": self.density_below,
            "threshold": self.threshold,
            "quantiles": self.quantiles,
            "sign": self.sign,
        }


@dataclass
class NeuronCard(Decoding):
    """A neuron's decoded tokens (a :class:`Decoding`) and, when the atlas has an activation
    part for its layer, its exemplars and statistics (``activity``)."""

    activity: Activity | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the decoding's dict plus ``activity`` (None without an activation part)."""
        data = super().to_dict()
        data["activity"] = None if self.activity is None else self.activity.to_dict()
        return data

    def __str__(self) -> str:
        lines = [super().__str__()]
        a = self.activity
        if a is None:
            return lines[0]
        lines.append(
            f"fires on ({a.corpus.get('tokens', '?')} corpus tokens): mean {a.mean:+.3f}, std "
            f"{a.std:.3f}, {a.density_above:.2%} above +{a.threshold:g}, "
            f"{a.density_below:.2%} below -{a.threshold:g}; strongest side "
            f"{'positive' if a.sign > 0 else 'negative'}"
        )
        for title, items in (("highest", a.top), ("lowest", a.bottom)):
            lines.append(f"  {title}:")
            for e in items:
                lines.append(f"    {e.value:+9.3f}  text {e.text:<5} {e.snippet()}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        a = self.activity
        if a is None:
            return super()._repr_html_()
        scale = max((abs(v) for e in a.top + a.bottom for v in e.values), default=0.0) or 1.0
        parts = [super()._repr_html_(), "<div><b>fires on</b>"]
        for title, items in (("highest", a.top), ("lowest", a.bottom)):
            rows = "".join(
                f"<tr><td style='text-align:right'>{e.value:+.3f}</td><td>{e.text}</td>"
                f"<td style='font-family:monospace;white-space:pre'>{_spans(e, scale)}</td></tr>"
                for e in items
            )
            parts.append(f"<div>{title}</div><table>{rows}</table>")
        return "".join(parts) + "</div>"


def _spans(e: Exemplar, scale: float) -> str:
    out = []
    for i, (t, v) in enumerate(zip(e.tokens, e.values)):
        rgb = "220,38,38" if v >= 0 else "37,99,235"  # red positive, blue negative
        style = f"background:rgba({rgb},{min(abs(v) / scale, 1.0):.2f})"
        if i == e.center:
            style += ";font-weight:bold;outline:1px solid #333"
        text = html.escape(show(t).strip("'\"") if t.isspace() else t, quote=True)
        out.append(f"<span title='{v:+.3f}' style='{style}'>{text}</span>")
    return "".join(out)


class ActivationPart:
    """The activation part of an atlas folder (``ATLAS/activations/``), read lazily."""

    def __init__(self, root: Path, weights: dict[str, Any], vocab: list[str]):
        manifest = read_manifest(root)
        if manifest is None:
            raise AtlasError(
                f"{root} has no activation part; add one with `conceptvec map "
                f"{root} --corpus SOURCE`"
            )
        self.root, self.manifest, self.vocab = root, manifest, vocab
        if manifest.get("atlas") != store.identity(weights):
            raise AtlasError(
                f"{root / ACT_DIR} was made for another atlas (model or recipe differ); remake "
                "it with `conceptvec map ATLAS --corpus SOURCE --overwrite`"
            )
        self.complete = bool(manifest.get("complete"))
        self.settings: dict[str, Any] = manifest.get("settings") or {}
        self.d_mlp = int(weights["dims"]["d_mlp"])
        self._layers: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def layers(self) -> list[int]:
        """Layers with activation statistics (none until the corpus pass finished)."""
        shards = self.manifest.get("shards") or {}
        return sorted(e["layer"] for e in shards.values() if type(e.get("layer")) is int)

    @property
    def corpus(self) -> dict[str, Any]:
        """The corpus's identity (sha256, texts, tokens) and its source."""
        return {**(self.manifest.get("source") or {}), **(self.manifest.get("corpus") or {})}

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        """Return one layer's tensors (hash-checked on first read)."""
        if layer not in self._layers:
            from safetensors.torch import load

            entry = (self.manifest.get("shards") or {}).get(f"L{layer:03d}")
            if entry is None:
                raise AtlasError(
                    f"the activation part has no layer {layer} (it has {self.layers}); add it "
                    f"with `conceptvec map {self.root} --corpus SOURCE --layers {layer}`"
                )
            path = files.confined(
                self.root / ACT_DIR, entry.get("file"), CorruptAtlasError, "remake it"
            )
            k, w = int(self.settings["k"]), 2 * int(self.settings["window"]) + 1
            limit = self.d_mlp * k * w * 12 * 2 + self.d_mlp * 256 + (1 << 16)
            data = files.read_bounded(path, CorruptAtlasError, "remake it", limit)
            if store.sha256_bytes(data) != entry.get("sha256"):
                raise CorruptAtlasError(f"{path} does not match its sha256; remake it")
            t = load(data)
            ids = t["top_window_ids"]
            if ids.shape != (self.d_mlp, k, w) or int(ids.max()) >= len(self.vocab):
                raise CorruptAtlasError(f"{path} has the wrong shape or token ids; remake it")
            self._layers[layer] = t
        return self._layers[layer]

    def exemplars(self, layer: int, index: int, side: str) -> list[Exemplar]:
        """Return a neuron's ``top`` or ``bottom`` exemplars, strongest first."""
        t = self.layer(layer)
        out = []
        vals = t[f"{side}_values"][index].tolist()
        for s, value in enumerate(vals):
            if value != value or abs(value) == float("inf"):  # fewer tokens than k
                continue
            ids = t[f"{side}_window_ids"][index, s].tolist()
            wv = t[f"{side}_window_values"][index, s].tolist()
            keep = [j for j, i in enumerate(ids) if i >= 0]
            center = keep.index(int(self.settings["window"]))
            out.append(
                Exemplar(
                    text=int(t[f"{side}_text"][index, s]),
                    position=int(t[f"{side}_pos"][index, s]),
                    value=float(value),
                    tokens=[self.vocab[ids[j]] for j in keep],
                    values=[float(wv[j]) for j in keep],
                    ids=[ids[j] for j in keep],
                    center=center,
                )
            )
        return out

    def activity(self, layer: int, index: int) -> Activity:
        """Return one neuron's :class:`Activity`."""
        t = self.layer(layer)
        qs = self.settings.get("quantiles") or []
        return Activity(
            corpus=self.corpus,
            top=self.exemplars(layer, index, "top"),
            bottom=self.exemplars(layer, index, "bottom"),
            mean=float(t["mean"][index]),
            std=float(t["std"][index]),
            density_above=float(t["density_above"][index]),
            density_below=float(t["density_below"][index]),
            threshold=float(self.settings.get("threshold", 0.0)),
            quantiles={f"{q:g}": float(v) for q, v in zip(qs, t["quantiles"][index].tolist())},
        )


def card(decoding: Decoding, part: ActivationPart | None) -> NeuronCard:
    """Return ``decoding`` as a :class:`NeuronCard`, with its activity when ``part`` has it."""
    n = decoding.neuron
    activity = None
    if part is not None and n is not None and n.layer in part.layers:
        activity = part.activity(n.layer, n.index)
    return NeuronCard(
        model=decoding.model,
        neuron=decoding.neuron,
        matrix=decoding.matrix,
        top=decoding.top,
        bottom=decoding.bottom,
        recipe=decoding.recipe,
        activity=activity,
    )
