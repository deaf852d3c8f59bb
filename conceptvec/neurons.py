"""Neuron ids: ``NeuronId(layer, index)``, written ``L12.345``; in a mixture-of-experts
model ``NeuronId(layer, index, expert)``, written ``L12.E5.345``.

Also accepted on input: ``L12N345``, ``12:345`` and ``12.345`` (and ``L12E5N345``,
``12:5:345`` with an expert). The matrix (``up``, ``gate`` or ``down``) is never part of the
id; functions take it as a separate argument.
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
_EXPERT_PATTERNS = (  # layer, expert, index
    re.compile(r"^[Ll]([0-9]+)[.:/]?[Ee]([0-9]+)[.Nn:/]([0-9]+)$"),
    re.compile(r"^([0-9]+):([0-9]+):([0-9]+)$"),
)


def _whole(digits: str, text: str) -> int:
    """Return ``digits`` as an int, refusing more than :data:`limits.DIGITS` of them."""
    from .limits import DIGITS

    if len(digits) > DIGITS:
        raise BadNeuronIdError(
            f"neuron id {text[:40]!r}... has a number of {len(digits):,} digits; "
            f"layers and indices have at most {DIGITS}"
        )
    return int(digits)


@dataclass(frozen=True)
class NeuronId:
    """One MLP neuron: hidden unit ``index`` of layer ``layer`` (both 0-based), and in a
    mixture-of-experts model, of expert ``expert`` of that layer (None in a dense model)."""

    layer: int
    index: int
    expert: int | None = None

    def __str__(self) -> str:
        if self.expert is None:
            return f"L{self.layer}.{self.index}"
        return f"L{self.layer}.E{self.expert}.{self.index}"

    def _key(self) -> tuple[int, int, int]:
        return (self.layer, -1 if self.expert is None else self.expert, self.index)

    def __lt__(self, other: NeuronId) -> bool:
        return self._key() < other._key()

    def __le__(self, other: NeuronId) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: NeuronId) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: NeuronId) -> bool:
        return self._key() >= other._key()

    @classmethod
    def parse(cls, text: str | NeuronId | tuple[int, ...]) -> NeuronId:
        """Return the NeuronId written as ``L12.345`` (or ``L12N345``, ``12:345``), or with an
        expert as ``L12.E5.345`` (or ``L12E5N345``, ``12:5:345``; a tuple is
        ``(layer, index)`` or ``(layer, index, expert)``)."""
        if isinstance(text, NeuronId):
            return text
        if isinstance(text, tuple) and len(text) in (2, 3):
            return cls(*(int(x) for x in text))
        if isinstance(text, str):
            s = text.strip()
            for pattern in _PATTERNS:
                m = pattern.match(s)
                if m:
                    return cls(_whole(m.group(1), text), _whole(m.group(2), text))
            for pattern in _EXPERT_PATTERNS:
                m = pattern.match(s)
                if m:
                    a, b, c = (_whole(g, text) for g in m.groups())
                    return cls(a, c, b)
        raise BadNeuronIdError(
            f"cannot read neuron id {text!r}: write it as L<layer>.<index>, e.g. L12.345 "
            "(L<layer>.E<expert>.<index>, e.g. L3.E5.123, in a mixture-of-experts model)"
        )

    def check(self, n_layers: int, d_mlp: int, n_experts: int | None = None) -> NeuronId:
        """Return self, or raise NeuronOutOfRangeError naming the valid ranges.

        ``n_experts`` is the experts per layer of a mixture-of-experts model (0 for a dense
        one: then an expert is refused); None leaves the expert unchecked.
        """
        if n_experts == 0 and self.expert is not None:
            raise NeuronOutOfRangeError(
                f"{self} names expert {self.expert}, but this model has no experts; "
                f"write L{self.layer}.{self.index}"
            )
        if n_experts and self.expert is None:
            raise NeuronOutOfRangeError(
                f"{self} names no expert, but this model has {n_experts} experts per layer; "
                f"write L{self.layer}.E<expert>.{self.index}, e.g. L{self.layer}.E0.{self.index}"
            )
        if n_experts and not 0 <= (self.expert or 0) < n_experts:
            raise NeuronOutOfRangeError(
                f"expert {self.expert} is out of range: this model has experts 0..{n_experts - 1}"
            )
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
