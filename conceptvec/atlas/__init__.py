"""The neuron atlas: every MLP neuron decoded, stored, searched, compared and exported.

- :func:`build_atlas` maps a model into a folder (``conceptvec map``);
- :class:`Atlas` reads one: ``atlas.neuron("L3.17")``, ``atlas.search("dog")``;
- :func:`search_weights` ranks every neuron by one token's score, straight from the weights;
- :func:`diff_atlases` compares two atlases of same-shaped models (base vs. unlearned);
- :mod:`conceptvec.atlas.export` writes Parquet, Neuronpedia ``batch-N.jsonl.gz`` and HTML.
"""

from .atlas import Atlas, AtlasHit
from .build import BuildReport, build_atlas
from .diff import AtlasDiff, diff_atlases
from .search import WeightHit, search_weights

__all__ = [
    "Atlas",
    "AtlasDiff",
    "AtlasHit",
    "BuildReport",
    "WeightHit",
    "build_atlas",
    "diff_atlases",
    "search_weights",
]
