"""Concept vectors: the ConceptVectors benchmark format (and, later, finding and validating).

- :func:`read_concepts` / :func:`write_concepts` read and write ConceptVectors JSON files;
- :class:`ConceptEntry` is one concept of such a file, :class:`TextCompletion` one probe.
"""

from .benchmark import STYLES, ConceptEntry, TextCompletion, read_concepts, write_concepts

__all__ = ["STYLES", "ConceptEntry", "TextCompletion", "read_concepts", "write_concepts"]
