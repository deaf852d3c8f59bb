"""conceptvec: find where a language model keeps its knowledge in its MLP weights.

The table of contents:

- :func:`load` opens a model (alias, hub id, folder, GGUF file or a live model object);
- :func:`decode` turns a neuron (``"L12.345"``, matrix ``up``/``gate``/``down``) or any
  residual vector into top and bottom tokens through the LM head;
- :func:`build_atlas` maps every neuron into an :class:`Atlas` folder (``conceptvec map``);
  :func:`search_weights` ranks neurons by a token straight from the weights;
  :func:`diff_atlases` compares two atlases (base vs. instruct or unlearned);
- :class:`NeuronId` names a neuron; :class:`ConceptvecError` is what bad input raises;
- :func:`intervene` applies :func:`clamp`, :func:`scale`, :func:`zero`, :func:`add`,
  :func:`mean_ablate`, :func:`noise`, :func:`zero_weights`, :func:`replace_weights` and
  :func:`steer` to a HF, TransformerLens or nnsight model inside a ``with`` block;
  :func:`measure_effect` and :func:`dose_response` measure what they do, against random
  controls.
- :func:`read_activations` reads neurons' MLP activations on text (an :class:`Activations`);
  :func:`top_contexts` shows a neuron's top activating tokens in context (:class:`TopContexts`).
- :func:`find_concept` finds the neurons that hold a named concept and validates them
  (a :class:`ConceptSearch` of :class:`ConceptVector` records); :func:`read_concepts` and
  :func:`write_concepts` read and write the ConceptVectors benchmark format;
- :func:`evaluate_qa` and :func:`evaluate_completion` score a model's answers with and
  without an intervention, against random controls (a :class:`QAEvaluation`);
- :func:`unlearn` makes an unlearned checkpoint of a concept with a published method
  (an :class:`UnlearnResult`; ``conceptvec unlearn``);
- :func:`evaluate.intrinsic` measures whether unlearning removed the concept vectors or
  only hid them (an :class:`evaluate.EvalReport`; ``conceptvec eval``), and
  :func:`evaluate.score` gives the same as a plain dict for other harnesses.
"""

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from . import evaluate
    from .activations import Activations, TopContexts, read_activations, top_contexts
    from .atlas import Atlas, AtlasHit, build_atlas
    from .atlas.build import BuildReport
    from .atlas.diff import AtlasDiff, diff_atlases
    from .atlas.search import WeightHit, search_weights
    from .concepts import (
        ConceptSearch,
        ConceptVector,
        concept_tokens,
        find_concept,
        read_concepts,
        write_concepts,
    )
    from .decode import Decoding, TokenScore, decode, decode_many, project
    from .errors import ConceptvecError
    from .evaluate import EvalReport, WeightComparison
    from .interventions import (
        DoseResponse,
        EffectResult,
        Intervention,
        add,
        clamp,
        dose_response,
        intervene,
        mean_ablate,
        measure_effect,
        noise,
        replace_weights,
        scale,
        steer,
        zero,
        zero_weights,
    )
    from .models import ALIASES, DEFAULT_MODEL, ArchSpec, Model
    from .models.load import load  # the function; mypy mistakes .models.load for the module
    from .neurons import MATRICES, NeuronId
    from .qa import QAEvaluation, evaluate_completion, evaluate_qa
    from .results import Result, SearchResult
    from .unlearning import UnlearnResult, unlearn

    __version__: str

# Where each public name lives. ``import conceptvec`` imports none of these modules (torch
# and transformers take seconds to import, and ``conceptvec --help`` needs neither); a name's
# module is imported on its first use, as ``import conceptvec; conceptvec.load(...)`` or
# ``from conceptvec import load``.
_HOMES = {
    ".activations": ("Activations", "TopContexts", "read_activations", "top_contexts"),
    ".atlas": ("Atlas", "AtlasHit", "build_atlas"),
    ".atlas.build": ("BuildReport",),
    ".atlas.diff": ("AtlasDiff", "diff_atlases"),
    ".atlas.search": ("WeightHit", "search_weights"),
    ".concepts": (
        "ConceptSearch",
        "ConceptVector",
        "concept_tokens",
        "find_concept",
        "read_concepts",
        "write_concepts",
    ),
    ".decode": ("Decoding", "TokenScore", "decode", "decode_many", "project"),
    ".errors": ("ConceptvecError",),
    ".interventions": (
        "DoseResponse",
        "EffectResult",
        "Intervention",
        "add",
        "clamp",
        "dose_response",
        "intervene",
        "mean_ablate",
        "measure_effect",
        "noise",
        "replace_weights",
        "scale",
        "steer",
        "zero",
        "zero_weights",
    ),
    ".models": ("ALIASES", "DEFAULT_MODEL", "ArchSpec", "Model", "load"),
    ".neurons": ("MATRICES", "NeuronId"),
    ".evaluate": ("EvalReport", "WeightComparison"),
    ".qa": ("QAEvaluation", "evaluate_completion", "evaluate_qa"),
    ".results": ("Result", "SearchResult"),
    ".unlearning": ("UnlearnResult", "unlearn"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
_SUBMODULES = ("evaluate",)
"""Public names that are modules: ``conceptvec.evaluate.intrinsic``."""


def __getattr__(name: str):
    """Import a public name's module on first use, and keep the name."""
    value: object
    if name in _SUBMODULES:
        value = import_module(f".{name}", __name__)
    elif name in _HOME:
        value = getattr(import_module(_HOME[name], __name__), name)
    elif name == "__version__":
        from .version import package_version

        value = package_version()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


class _Package(types.ModuleType):
    """conceptvec's module type: a public function keeps its name when the module of the same
    name is imported (``conceptvec.decode`` stays the function after ``conceptvec.decode``, the
    module, is imported: Python binds a submodule on its package, over the function)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _HOME:
            return  # the name stays the function, found by __getattr__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "evaluate",
    "ALIASES",
    "DEFAULT_MODEL",
    "MATRICES",
    "Activations",
    "ArchSpec",
    "Atlas",
    "AtlasDiff",
    "AtlasHit",
    "BuildReport",
    "ConceptSearch",
    "ConceptVector",
    "ConceptvecError",
    "Decoding",
    "EvalReport",
    "DoseResponse",
    "EffectResult",
    "Intervention",
    "Model",
    "NeuronId",
    "QAEvaluation",
    "Result",
    "SearchResult",
    "TokenScore",
    "TopContexts",
    "UnlearnResult",
    "WeightComparison",
    "WeightHit",
    "add",
    "build_atlas",
    "clamp",
    "concept_tokens",
    "decode",
    "decode_many",
    "diff_atlases",
    "dose_response",
    "evaluate_completion",
    "evaluate_qa",
    "find_concept",
    "intervene",
    "load",
    "mean_ablate",
    "measure_effect",
    "noise",
    "project",
    "read_activations",
    "read_concepts",
    "replace_weights",
    "scale",
    "search_weights",
    "steer",
    "top_contexts",
    "unlearn",
    "write_concepts",
    "zero",
    "zero_weights",
]
