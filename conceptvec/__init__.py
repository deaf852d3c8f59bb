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

from . import evaluate
from .activations import Activations, TopContexts, read_activations, top_contexts
from .atlas import Atlas, build_atlas
from .atlas.diff import diff_atlases
from .atlas.search import search_weights
from .concepts import (
    ConceptSearch,
    ConceptVector,
    concept_tokens,
    find_concept,
    read_concepts,
    write_concepts,
)
from .decode import Decoding, TokenScore, decode, project
from .errors import ConceptvecError
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
from .models import ALIASES, DEFAULT_MODEL, ArchSpec, Model, load
from .neurons import MATRICES, NeuronId
from .qa import QAEvaluation, evaluate_completion, evaluate_qa
from .unlearning import UnlearnResult, unlearn
from .version import package_version

__version__ = package_version()

__all__ = [
    "evaluate",
    "ALIASES",
    "DEFAULT_MODEL",
    "MATRICES",
    "Activations",
    "ArchSpec",
    "Atlas",
    "ConceptSearch",
    "ConceptVector",
    "ConceptvecError",
    "Decoding",
    "DoseResponse",
    "EffectResult",
    "Intervention",
    "Model",
    "NeuronId",
    "QAEvaluation",
    "TokenScore",
    "TopContexts",
    "UnlearnResult",
    "add",
    "build_atlas",
    "clamp",
    "concept_tokens",
    "decode",
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
