"""conceptvec: find where a language model keeps its knowledge in its MLP weights.

The table of contents:

- :func:`load` opens a model (alias, hub id, folder, GGUF file or a live model object);
- :func:`decode` turns a neuron (``"L12.345"``, matrix ``up``/``gate``/``down``) or any
  residual vector into top and bottom tokens through the LM head;
- :class:`NeuronId` names a neuron; :class:`ConceptvecError` is what bad input raises.
"""

from .decode import Decoding, TokenScore, decode, project
from .errors import ConceptvecError
from .models import ALIASES, DEFAULT_MODEL, ArchSpec, Model, load
from .neurons import MATRICES, NeuronId

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "MATRICES",
    "ArchSpec",
    "ConceptvecError",
    "Decoding",
    "Model",
    "NeuronId",
    "TokenScore",
    "decode",
    "load",
    "project",
]
