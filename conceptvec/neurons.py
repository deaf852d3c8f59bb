"""Neuron ids: ``NeuronId(layer, index)``, written ``L12.345``.

Also accepted on input: ``L12N345``, ``12:345`` and ``12.345``. The matrix (``up``, ``gate``
or ``down``) is never part of the id; functions take it as a separate argument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import BadLayersError, BadNeuronIdError, NeuronOutOfRangeError

MATRICES = ("up", "gate", "down")
"""Where a neuron's vector lives: rows of the up / gate projection (what the neuron reads
from the residual stream) or a column of the down projection (what it writes)."""

_PATTERNS = (
    re.compile(r"^[Ll]([0-9]+)[.Nn:/]([0-9]+)$"),
    re.compile(r"^([0-9]+)[.:]([0-9]+)$"),
)


@dataclass(frozen=True, order=True)
class NeuronId:
    """One MLP neuron: hidden unit ``index`` of layer ``layer`` (both 0-based)."""

    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}.{self.index}"

    @classmethod
    def parse(cls, text: str | NeuronId | tuple[int, int]) -> NeuronId:
        """Return the NeuronId written as ``L12.345`` (or ``L12N345``, ``12:345``)."""
        if isinstance(text, NeuronId):
            return text
        if isinstance(text, tuple) and len(text) == 2:
            return cls(int(text[0]), int(text[1]))
        if isinstance(text, str):
            s = text.strip()
            for pattern in _PATTERNS:
                m = pattern.match(s)
                if m:
                    return cls(int(m.group(1)), int(m.group(2)))
        raise BadNeuronIdError(
            f"cannot read neuron id {text!r}: write it as L<layer>.<index>, e.g. L12.345"
        )

    def check(self, n_layers: int, d_mlp: int) -> NeuronId:
        """Return self, or raise NeuronOutOfRangeError naming the valid ranges."""
        if not 0 <= self.layer < n_layers:
            raise NeuronOutOfRangeError(
                f"layer {self.layer} is out of range: this model has layers 0..{n_layers - 1}"
            )
        if not 0 <= self.index < d_mlp:
            raise NeuronOutOfRangeError(
                f"neuron {self.index} is out of range: layer {self.layer} has neurons 0..{d_mlp - 1}"
            )
        return self


def check_matrix(matrix: str, gated: bool = True) -> str:
    """Return ``matrix`` lower-cased if it names an MLP matrix this model has, else raise."""
    m = str(matrix).lower()
    allowed = MATRICES if gated else ("up", "down")
    if m not in allowed:
        extra = "" if gated else " (this model's MLP is not gated, so it has no gate matrix)"
        raise BadNeuronIdError(f"unknown matrix {matrix!r}: use one of {', '.join(allowed)}{extra}")
    return m


def parse_layers(layers: str | Iterable[int] | None) -> list[int] | None:
    """Return the layers ``"0-3,7"`` names, ``[0, 1, 2, 3, 7]`` (None for all; a list of
    ints is returned as a list). What ``--layers`` takes on the command line."""
    if layers is None or isinstance(layers, str) and not layers.strip():
        return None
    if not isinstance(layers, str):
        return [int(layer) for layer in layers]
    out: list[int] = []
    for part in layers.split(","):
        m = re.fullmatch(r"\s*([0-9]{1,6})\s*(?:-\s*([0-9]{1,6})\s*)?", part)
        if not m:
            raise BadLayersError(f"cannot read layers {layers!r}; write them like 0-3,7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BadLayersError(f"layers {part.strip()!r} run backwards; write {hi}-{lo}")
        out += range(lo, hi + 1)
    return out
