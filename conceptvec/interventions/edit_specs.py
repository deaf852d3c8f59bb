"""What an intervention is: small frozen dataclasses, and the functions that build them.

Three places can be edited:

- the MLP hidden activation of one neuron (the input of ``down_proj``: ``act(gate) * up`` in
  gated MLPs, ``act(up)`` in GPT-2): :class:`NeuronEdit` (clamp, scale, add; zeroing and mean
  ablation are clamps to 0 and to a mean);
- the neuron's weights: :class:`WeightEdit` (Gaussian noise, zeroing, replacement) on a
  ``down`` column or an ``up`` / ``gate`` row;
- the residual stream after a decoder layer: :class:`Steer` adds a vector;
- activations per position, from a tensor (activation patching): :class:`Patch` sets one
  neuron's MLP activation, a whole layer's MLP activations, or the residual stream after a
  layer, at each position the tensor covers.

Specs hold no model. They are checked against a model's dimensions when applied
(:func:`conceptvec.intervene`), and can be listed, nested and reused: ``[clamp("L29.808",
30), steer(12, v)]`` is an intervention too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch

from conceptvec.errors import BadInterventionError
from conceptvec.neurons import NeuronId, check_matrix

Positions = Literal["all", "prompt", "generated", "last"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "last")
"""Which tokens an activation edit or a steering vector touches:

- ``all``: every token of every forward pass;
- ``prompt``: the tokens of the prompt (the first forward pass of a generation);
- ``generated``: only tokens the model generated (later passes of ``generate``);
- ``last``: the last token of the prompt, where the first next-token prediction is made."""


def check_positions(positions: str) -> Positions:
    """Return ``positions`` if it names a position set, else raise BadInterventionError."""
    if positions not in POSITIONS:
        raise BadInterventionError(
            f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}"
        )
    return cast(Positions, positions)


def finite(value: Any, what: str) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInterventionError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadInterventionError(f"{what} must be finite, got {value!r}; pass a real number")
    return number


def _vector(vector: Any, what: str) -> torch.Tensor:
    v = torch.as_tensor(vector).detach()
    if v.ndim != 1 or not v.dtype.is_floating_point:
        raise BadInterventionError(
            f"{what} must be a 1-D float vector [d_model], got shape {tuple(v.shape)} "
            f"and dtype {v.dtype}"
        )
    if not bool(torch.isfinite(v).all()):
        raise BadInterventionError(f"{what} has NaN or infinite entries; pass a finite vector")
    return v


@dataclass(frozen=True, eq=False)
class NeuronEdit:
    """Set, scale or shift one neuron's MLP hidden activation (the input of ``down_proj``).

    ``op`` is ``clamp`` (set to ``value``), ``scale`` (multiply by ``value``) or ``add``;
    ``label`` says how it was made (``zero``, ``mean``) for display.
    """

    neuron: NeuronId
    op: Literal["clamp", "scale", "add"]
    value: float
    positions: Positions = "all"
    label: str = ""

    def __str__(self) -> str:
        kind = self.label or self.op
        where = "" if self.positions == "all" else f" @{self.positions}"
        if kind == "zero":
            return f"zero {self.neuron}{where}"
        return f"{kind} {self.neuron}={self.value:g}{where}"

    def on(self, neuron: NeuronId) -> NeuronEdit:
        """Return the same edit on another neuron (random-neuron controls use this)."""
        return replace(self, neuron=neuron)


@dataclass(frozen=True, eq=False)
class WeightEdit:
    """Edit one neuron's vector in a weight matrix; restored bit-exactly afterwards.

    ``op`` is ``noise`` (add Gaussian noise with standard deviation ``std`` per entry, or
    ``std * |v| / sqrt(d_model)`` when ``relative``, so the noise has about ``std`` times the
    vector's norm), ``zero``, or ``replace`` (with ``vector``, shape ``[d_model]``).
    """

    neuron: NeuronId
    matrix: str
    op: Literal["noise", "zero", "replace"]
    std: float = 0.0
    relative: bool = False
    seed: int = 0
    vector: torch.Tensor | None = None

    def __str__(self) -> str:
        if self.op == "noise":
            rel = " x|v|/sqrt(d)" if self.relative else ""
            return f"noise {self.neuron} {self.matrix} (std {self.std:g}{rel}, seed {self.seed})"
        return f"{self.op} {self.neuron} {self.matrix} weights"

    def on(self, neuron: NeuronId) -> WeightEdit:
        """Return the same edit on another neuron."""
        return replace(self, neuron=neuron)


@dataclass(frozen=True, eq=False)
class Steer:
    """Add ``scale * vector`` (``[d_model]``) to the residual stream after decoder ``layer``."""

    layer: int
    vector: torch.Tensor
    scale: float = 1.0
    positions: Positions = "all"

    def __str__(self) -> str:
        where = "" if self.positions == "all" else f" @{self.positions}"
        norm = float(self.vector.float().norm()) * abs(self.scale)
        return f"steer L{self.layer} (|v|={norm:.3g}){where}"


@dataclass(frozen=True, eq=False)
class Patch:
    """Set activations at each position from ``values`` (activation patching).

    ``point`` is ``mlp`` (the MLP hidden activation, the input of ``down_proj``) or ``resid``
    (the residual stream after decoder ``layer``). With ``index`` set, one neuron of the MLP
    activation is patched and ``values`` is ``[tokens]`` or ``[batch, tokens]``; without, the
    whole point is and ``values`` is ``[tokens, width]`` or ``[batch, tokens, width]``.

    Values are indexed by absolute position in the sequence as run (padding included): a
    forward pass over positions ``offset .. offset + n`` (after ``offset`` cached tokens)
    takes those columns, and positions past the end of ``values`` keep their own values.
    """

    layer: int
    point: Literal["mlp", "resid"]
    values: torch.Tensor
    index: int | None = None

    @property
    def neuron(self) -> NeuronId | None:
        """The patched neuron, or None for a whole-layer patch."""
        return None if self.index is None else NeuronId(self.layer, self.index)

    @property
    def n_positions(self) -> int:
        """How many positions ``values`` covers."""
        return int(self.values.shape[-1 if self.index is not None else -2])

    def __str__(self) -> str:
        what = str(self.neuron) if self.index is not None else f"L{self.layer} {self.point}"
        return f"patch {what} ({self.n_positions} positions)"


Edit = NeuronEdit | WeightEdit | Steer | Patch
"""One edit of any kind."""
Edits = Edit | Iterable[Any]
"""One edit, or a (nested) list of edits."""


# ------------------------------------------------------------------------- builders
def clamp(neuron: NeuronId | str, value: float, positions: Positions = "all") -> NeuronEdit:
    """Return an edit that sets ``neuron``'s activation to ``value``."""
    return NeuronEdit(
        NeuronId.parse(neuron), "clamp", finite(value, "clamp value"), check_positions(positions)
    )


def scale(neuron: NeuronId | str, factor: float, positions: Positions = "all") -> NeuronEdit:
    """Return an edit that multiplies ``neuron``'s activation by ``factor``."""
    return NeuronEdit(
        NeuronId.parse(neuron), "scale", finite(factor, "scale factor"), check_positions(positions)
    )


def add(neuron: NeuronId | str, delta: float, positions: Positions = "all") -> NeuronEdit:
    """Return an edit that adds ``delta`` to ``neuron``'s activation."""
    return NeuronEdit(
        NeuronId.parse(neuron), "add", finite(delta, "added value"), check_positions(positions)
    )


def zero(neuron: NeuronId | str, positions: Positions = "all") -> NeuronEdit:
    """Return an edit that sets ``neuron``'s activation to 0 (zero ablation)."""
    return NeuronEdit(NeuronId.parse(neuron), "clamp", 0.0, check_positions(positions), "zero")


def noise(
    neuron: NeuronId | str,
    std: float = 0.1,
    *,
    matrix: str = "down",
    relative: bool = False,
    seed: int = 0,
) -> WeightEdit:
    """Return a weight edit adding N(0, std) noise to the neuron's vector in ``matrix``.

    ConceptVectors uses ``std=0.1`` on ``down`` columns. With ``relative=True`` the
    per-entry standard deviation is ``std * |v| / sqrt(d_model)``: noise of about ``std``
    times the vector's own norm.
    """
    std = finite(std, "noise std")
    if std < 0:
        raise BadInterventionError(f"noise std must be >= 0, got {std:g}")
    return WeightEdit(NeuronId.parse(neuron), check_matrix(matrix), "noise", std, relative, seed)


def zero_weights(neuron: NeuronId | str, *, matrix: str = "down") -> WeightEdit:
    """Return a weight edit that zeroes the neuron's vector in ``matrix``."""
    return WeightEdit(NeuronId.parse(neuron), check_matrix(matrix), "zero")


def replace_weights(neuron: NeuronId | str, vector: Any, *, matrix: str = "down") -> WeightEdit:
    """Return a weight edit that replaces the neuron's vector in ``matrix`` with ``vector``
    (``[d_model]``); e.g. ``-model.neuron_vector(n)`` reverses it."""
    v = _vector(vector, "replacement vector")
    return WeightEdit(NeuronId.parse(neuron), check_matrix(matrix), "replace", vector=v)


def steer(layer: int, vector: Any, scale: float = 1.0, positions: Positions = "all") -> Steer:
    """Return an edit adding ``scale * vector`` to the residual stream after ``layer``."""
    return Steer(
        int(layer),
        _vector(vector, "steering vector"),
        finite(scale, "steering scale"),
        check_positions(positions),
    )


def _patch_values(values: Any, dims: tuple[int, ...], what: str) -> torch.Tensor:
    v = torch.as_tensor(values).detach()
    if v.ndim not in dims or not v.dtype.is_floating_point or v.shape[-1] == 0:
        shapes = " or ".join(f"{n}-D" for n in dims)
        raise BadInterventionError(
            f"{what} must be a {shapes} float tensor with at least one position, got shape "
            f"{tuple(v.shape)} and dtype {v.dtype}"
        )
    if not bool(torch.isfinite(v).all()):
        raise BadInterventionError(f"{what} has NaN or infinite entries; pass finite values")
    return v


def patch(neuron: NeuronId | str, values: Any) -> Patch:
    """Return an edit setting ``neuron``'s MLP activation at each position to ``values``
    (``[tokens]``, or ``[batch, tokens]`` for one row of values per batch row)."""
    n = NeuronId.parse(neuron)
    return Patch(n.layer, "mlp", _patch_values(values, (1, 2), f"patch values of {n}"), n.index)


def patch_mlp(layer: int, values: Any) -> Patch:
    """Return an edit setting ``layer``'s whole MLP activation at each position to ``values``
    (``[tokens, d_mlp]`` or ``[batch, tokens, d_mlp]``)."""
    return Patch(int(layer), "mlp", _patch_values(values, (2, 3), f"MLP patch of L{layer}"))


def patch_resid(layer: int, values: Any) -> Patch:
    """Return an edit setting the residual stream after ``layer`` at each position to
    ``values`` (``[tokens, d_model]`` or ``[batch, tokens, d_model]``)."""
    return Patch(int(layer), "resid", _patch_values(values, (2, 3), f"residual patch of L{layer}"))


_ASSIGNMENT = re.compile(r"^\s*([^=\s]+)\s*=\s*(\S+)\s*$")


def parse_assignment(text: str) -> tuple[NeuronId, float]:
    """Return ``(neuron, value)`` from ``"L29.808=30"``; raise on a malformed one."""
    m = _ASSIGNMENT.match(str(text))
    if not m:
        raise BadInterventionError(
            f"cannot read {text!r}: write a clamp as L<layer>.<index>=<value>, e.g. L29.808=30"
        )
    return NeuronId.parse(m.group(1)), finite(m.group(2), f"value in {text!r}")


def flatten(interventions: Edits) -> list[Edit]:
    """Return the edits in ``interventions`` (one edit or nested lists) as a flat list."""
    if isinstance(interventions, (NeuronEdit, WeightEdit, Steer, Patch)):
        return [interventions]
    if isinstance(interventions, (str, bytes)) or not isinstance(interventions, Iterable):
        raise BadInterventionError(
            f"expected an intervention (clamp, scale, noise, steer, ...) or a list of them, "
            f"got {type(interventions).__name__}"
        )
    out: list[Edit] = []
    for item in interventions:
        out.extend(flatten(item))
    return out


def check_against(
    edits: list[Edit], n_layers: int, d_mlp: int, d_model: int, n_experts: int | None = None
) -> None:
    """Raise if an edit names a layer, neuron, expert or vector size this model does not have
    (``n_experts``: 0 for a dense model, None to leave experts unchecked)."""
    for e in edits:
        if isinstance(e, Patch):
            NeuronId(e.layer, e.index or 0).check(n_layers, d_mlp)
            width = d_mlp if e.point == "mlp" else d_model
            if e.index is None and e.values.shape[-1] != width:
                raise BadInterventionError(
                    f"{e}: its values have {e.values.shape[-1]} entries per position; this "
                    f"model's {'MLP' if e.point == 'mlp' else 'residual stream'} has {width}"
                )
            continue
        if isinstance(e, Steer):
            NeuronId(e.layer, 0).check(n_layers, d_mlp)
            if e.vector.shape[0] != d_model:
                raise BadInterventionError(
                    f"steering vector has {e.vector.shape[0]} entries; this model's residual "
                    f"stream has d_model={d_model}"
                )
            continue
        e.neuron.check(n_layers, d_mlp, n_experts)
        if isinstance(e, WeightEdit) and e.vector is not None and e.vector.shape[0] != d_model:
            raise BadInterventionError(
                f"replacement vector for {e.neuron} has {e.vector.shape[0]} entries; "
                f"expected d_model={d_model}"
            )
