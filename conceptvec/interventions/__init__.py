"""Interventions: clamp, scale, zero, mean-ablate, add, noise, replace, steer and patch, on any backend.

The public names are re-exported by :mod:`conceptvec`; see ``docs/interventions.md``.
"""

from conceptvec.models.backends import Target, resolve

from .ablation import mean_ablate, neuron_means
from .apply import Intervention, generate, intervene, logits
from .controls import random_controls
from .edit_specs import (
    POSITIONS,
    NeuronEdit,
    Patch,
    Steer,
    WeightEdit,
    add,
    clamp,
    noise,
    parse_assignment,
    patch,
    patch_mlp,
    patch_resid,
    replace_weights,
    scale,
    steer,
    zero,
    zero_weights,
)
from .effect import EffectResult, PromptEffect, TokenProb, measure_effect
from .sweep import DoseResponse, dose_response

__all__ = [
    "POSITIONS",
    "DoseResponse",
    "EffectResult",
    "Intervention",
    "PromptEffect",
    "TokenProb",
    "NeuronEdit",
    "Patch",
    "Steer",
    "Target",
    "WeightEdit",
    "add",
    "clamp",
    "dose_response",
    "generate",
    "intervene",
    "logits",
    "mean_ablate",
    "measure_effect",
    "neuron_means",
    "noise",
    "parse_assignment",
    "patch",
    "patch_mlp",
    "patch_resid",
    "random_controls",
    "replace_weights",
    "resolve",
    "scale",
    "steer",
    "zero",
    "zero_weights",
]
