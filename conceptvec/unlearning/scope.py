"""Parameter scope: which weights a method may change.

- ``full``: every parameter;
- ``down``: every MLP down_proj weight; ``down:A-B`` those of layers A..B;
- ``layers:A-B``: every parameter of decoder layers A..B (inclusive; ``layers:7`` one);
- ``vector``: one concept vector, a single down_proj column (a gradient mask zeroes the
  gradient of every other column, and weight decay is off for that matrix, so nothing else
  moves by even one bit);
- ``rmu``: RMU's default, the down_proj of layers ``layer-2 .. layer``.

Everything outside the scope is frozen (``requires_grad=False``), so it stays bit-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from conceptvec.errors import UnlearningError
from conceptvec.neurons import NeuronId

_RANGE = re.compile(r"^([0-9]{1,9})(?:-([0-9]{1,9}))?$")


@dataclass(frozen=True)
class Scope:
    """A parsed scope: its kind, layer range and (``vector``) the neuron."""

    kind: str
    """``full``, ``down``, ``layers`` or ``vector``."""
    first: int | None = None
    last: int | None = None
    neuron: NeuronId | None = None

    def __str__(self) -> str:
        if self.kind == "vector":
            return f"vector:{self.neuron}"
        if self.first is None:
            return self.kind
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.kind}:{span}"

    def covers(self, layer: int | None) -> bool:
        """Return whether ``layer`` is in the scope's layer range (any layer when it has none;
        never a parameter outside the decoder layers, ``layer=None``)."""
        if self.first is None or self.last is None:
            return True
        return layer is not None and self.first <= layer <= self.last


def parse_scope(text: str, n_layers: int, neuron: NeuronId | None = None) -> Scope:
    """Return the :class:`Scope` ``text`` names, checked against ``n_layers``."""
    kind, _, rest = str(text).strip().partition(":")
    if kind == "full" and not rest:
        return Scope("full")
    if kind == "vector":
        if neuron is None:
            raise UnlearningError(
                "scope vector needs the concept vector: pass neuron='L29.1518' (--neuron), "
                "'find' to run the finder, or 'file' for the record's Layer/Dim"
            )
        return Scope("vector", neuron.layer, neuron.layer, neuron)
    if kind == "down" and not rest:
        return Scope("down")
    if kind in ("down", "layers"):
        m = _RANGE.match(rest)
        if not m:
            raise UnlearningError(f"scope {text!r}: expected {kind}:A-B with layer numbers")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 0 <= first <= last < n_layers:
            raise UnlearningError(
                f"scope {text!r} names layers {first}..{last}, but the model has layers "
                f"0..{n_layers - 1}; pick a range within them"
            )
        return Scope(kind, first, last)
    raise UnlearningError(f"unknown scope {text!r}; use full, down, down:A-B, layers:A-B or vector")


def _layer_of(name: str, layers_module: str) -> int | None:
    prefix = layers_module + "."
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def apply_scope(model: Any, scope: Scope, spec: Any) -> list[str]:
    """Freeze every parameter outside ``scope``; return the names left trainable.

    For ``vector``, also register a gradient mask on the neuron's down_proj weight.
    """
    down = spec.down_module + ".weight"
    names = []
    for name, p in model.named_parameters():
        layer = _layer_of(name, spec.layers_module)
        if scope.kind == "full":
            keep = True
        elif scope.kind == "layers":
            keep = layer is not None and scope.covers(layer)
        else:  # down, vector
            keep = layer is not None and name.endswith(down) and scope.covers(layer)
        if keep and not p.dtype.is_floating_point:
            raise UnlearningError(
                f"{name} is stored as {p.dtype}, which cannot be trained; load the model in "
                "float32 or bfloat16 (a GGUF source is dequantized for you)"
            )
        p.requires_grad_(keep)
        if keep:
            names.append(name)
    if not names:
        raise UnlearningError(f"scope {scope} selects no parameter of this model")
    if scope.neuron is not None:  # the vector scope
        weight = column_weight(model, spec, scope.neuron)
        mask = torch.zeros_like(weight)
        mask[:, scope.neuron.index] = 1
        weight.register_hook(lambda g: g * mask.to(g.device, g.dtype))
    return names


def trainable_values(model: Any, scope: Scope, spec: Any) -> int:
    """Return how many weight values training may change: every value of the unfrozen
    parameters, but only the neuron's column (``d_model`` values) under the ``vector`` scope,
    whose gradient mask freezes the rest of its matrix."""
    if scope.neuron is not None:
        return int(column_weight(model, spec, scope.neuron).shape[0])
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def column_weight(model: Any, spec: Any, neuron: NeuronId) -> torch.Tensor:
    """Return the down_proj weight ``[d_model, d_mlp]`` holding ``neuron``'s column."""
    module = model
    for part in spec.layers_module.split("."):
        module = getattr(module, part)
    layer = module[neuron.layer]
    for part in spec.down_module.split("."):
        layer = getattr(layer, part)
    if not isinstance(layer, torch.nn.Linear):
        raise UnlearningError(
            f"{spec.family}: the down projection is a {type(layer).__name__}, not a Linear; "
            "the vector scope supports Linear layers only"
        )
    return layer.weight
