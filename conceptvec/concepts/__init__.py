"""Concept vectors: neurons that hold a concept, found, validated and stored.

- :func:`find_concept` goes from a concept's name (and its text and QA) to validated
  :class:`ConceptVector` records in any model, returning a :class:`ConceptSearch`;
- :func:`concept_tokens` builds a concept's token set (:class:`ConceptTokens`), and
  :func:`search_concept` ranks every neuron on its key words and
  :func:`search_text_words` on its text's distinctive words, the finder's two searches;
- :func:`read_concepts` / :func:`write_concepts` read and write ConceptVectors JSON files;
  :class:`ConceptEntry` is one concept of such a file, :class:`TextCompletion` one probe;
- :func:`build_concepts` maps every concept of such a file to this model's vectors.
"""

from conceptvec.config import FindConfig

from .benchmark import STYLES, ConceptEntry, TextCompletion, read_concepts, write_concepts
from .find import ConceptSearch, find_concept, search_concept, search_text_words
from .record import (
    VERDICTS,
    ActivationEvidence,
    ConceptVector,
    KnockoutEvidence,
    WeightEvidence,
)
from .tokens import ConceptTokens, concept_tokens
from .validate import MODES, FindThresholds, judge

__all__ = [
    "FindConfig",
    "MODES",
    "STYLES",
    "VERDICTS",
    "ActivationEvidence",
    "ConceptEntry",
    "ConceptSearch",
    "ConceptTokens",
    "ConceptVector",
    "KnockoutEvidence",
    "TextCompletion",
    "FindThresholds",
    "WeightEvidence",
    "concept_tokens",
    "find_concept",
    "judge",
    "read_concepts",
    "search_concept",
    "search_text_words",
    "write_concepts",
]
