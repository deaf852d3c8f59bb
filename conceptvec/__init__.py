"""conceptvec: find where a language model keeps its knowledge in its MLP weights.

The table of contents (``__all__``; everything else lives in its subpackage):

- :func:`load` opens a model (alias, hub id, folder, GGUF file or a live model object) as a
  :class:`Model`; :class:`NeuronId` names a neuron; :class:`ConceptvecError` is what bad
  input raises;
- :func:`decode` turns a neuron (``"L12.345"``, matrix ``up``/``gate``/``down``) or any
  residual vector into top and bottom tokens through the LM head (a :class:`Decoding`);
- :func:`build_atlas` maps every neuron into an :class:`Atlas` folder (``conceptvec map``);
  :func:`search_weights` ranks neurons by a token straight from the weights
  (:mod:`conceptvec.atlas` also diffs two atlases);
- :func:`intervene` applies :func:`clamp`, :func:`scale`, :func:`zero`, :func:`add`,
  :func:`mean_ablate`, :func:`noise`, :func:`steer` and :func:`patch` (activation patching
  from a tensor; whole layers in :mod:`conceptvec.interventions`) to a HF, TransformerLens or nnsight
  model inside a ``with`` block; :func:`measure_effect` measures what they do against random
  controls (an :class:`EffectResult`; weight edits and dose-response curves are in
  :mod:`conceptvec.interventions`);
- :func:`read_activations` reads neurons' MLP activations on text (an :class:`Activations`);
  :func:`top_contexts` shows a neuron's top activating tokens in context (:class:`TopContexts`);
- :func:`find_concept` finds the neurons that hold a named concept and validates them
  (a :class:`ConceptSearch` of :class:`ConceptVector` records; the ConceptVectors file
  format is in :mod:`conceptvec.concepts`, answer scoring in :mod:`conceptvec.qa`);
- :func:`unlearn` makes an unlearned checkpoint of a concept with a published method
  (an :class:`UnlearnResult`; ``conceptvec unlearn``);
- :func:`evaluate.intrinsic` measures whether unlearning removed the concept vectors or
  only hid them (an :class:`EvalReport`; ``conceptvec eval``), and
  :func:`evaluate.score` gives the same as a plain dict for other harnesses.

A few names used in the tutorials (``dose_response``, ``zero_weights``, ``evaluate_qa`` ...)
also resolve here, from their subpackages.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from . import evaluate
    from .activations import Activations, TopContexts, read_activations, top_contexts
    from .atlas import Atlas, build_atlas, search_weights
    from .concepts import ConceptSearch, ConceptVector, find_concept
    from .decoding import Decoding, decode
    from .errors import ConceptvecError
    from .evaluate import EvalReport
    from .interventions import (
        EffectResult,
        add,
        clamp,
        intervene,
        mean_ablate,
        measure_effect,
        noise,
        patch,
        scale,
        steer,
        zero,
    )
    from .models import Model, load
    from .neurons import NeuronId
    from .unlearning import UnlearnResult, unlearn

    __version__: str

if TYPE_CHECKING:  # names the tutorials use: they resolve here but are listed by subpackages
    from .concepts import concept_tokens  # noqa: F401
    from .decoding import decode_many, project  # noqa: F401
    from .interventions import dose_response, replace_weights, zero_weights  # noqa: F401
    from .qa import QAEvaluation, evaluate_completion, evaluate_qa  # noqa: F401

# Where each public name lives. ``import conceptvec`` imports none of these modules (torch
# and transformers take seconds to import, and ``conceptvec --help`` needs neither); a name's
# module is imported on its first use, as ``import conceptvec; conceptvec.load(...)`` or
# ``from conceptvec import load``. Everything else is imported from its subpackage
# (``conceptvec.atlas``, ``conceptvec.interventions``, ``conceptvec.concepts`` ...).
_HOMES = {
    ".activations": ("Activations", "TopContexts", "read_activations", "top_contexts"),
    ".atlas": ("Atlas", "build_atlas", "search_weights"),
    ".concepts": ("ConceptSearch", "ConceptVector", "concept_tokens", "find_concept"),
    ".decoding": ("Decoding", "decode", "decode_many", "project"),
    ".errors": ("ConceptvecError",),
    ".evaluate": ("EvalReport",),
    ".interventions": (
        "EffectResult",
        "add",
        "clamp",
        "dose_response",
        "intervene",
        "mean_ablate",
        "measure_effect",
        "noise",
        "patch",
        "replace_weights",
        "scale",
        "steer",
        "zero",
        "zero_weights",
    ),
    ".models": ("Model", "load"),
    ".neurons": ("NeuronId",),
    ".qa": ("QAEvaluation", "evaluate_completion", "evaluate_qa"),
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


__all__ = [
    # opening a model and naming a neuron
    "load",
    "Model",
    "NeuronId",
    # weights: what a neuron says
    "decode",
    "Decoding",
    "build_atlas",
    "Atlas",
    "search_weights",
    # interventions: what a neuron does
    "intervene",
    "clamp",
    "scale",
    "zero",
    "add",
    "mean_ablate",
    "noise",
    "steer",
    "patch",
    "measure_effect",
    "EffectResult",
    # activations: when a neuron fires
    "read_activations",
    "Activations",
    "top_contexts",
    "TopContexts",
    # concepts, unlearning and its evaluation
    "find_concept",
    "ConceptSearch",
    "ConceptVector",
    "unlearn",
    "UnlearnResult",
    "evaluate",
    "EvalReport",
    "ConceptvecError",
]
