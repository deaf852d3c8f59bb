"""Concepts files shipped with conceptvec, reachable by name from Python and the CLI.

``read_concepts("smollm2-dev")`` and ``--concepts smollm2-dev`` read the packaged file; a
path that exists always wins over a name. Attribution and licence: ``README.md`` here.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGED_CONCEPTS: dict[str, tuple[str, str]] = {
    "conceptvectors-dev": (
        "conceptvectors_dev_sample.json",
        "ten dev concepts of the ConceptVectors benchmark, LLaMA-2-7B vectors (CC BY 4.0)",
    ),
    "smollm2-dev": (
        "smollm2_concepts_dev.json",
        "the same ten concepts with SmolLM2-135M-Instruct's vectors (conceptvec concepts build)",
    ),
}
"""Name -> (file in this folder, what it holds)."""

_HERE = Path(__file__).resolve().parent


def concepts_file(name: str) -> Path:
    """Return the path of the packaged concepts file called ``name`` (see :data:`PACKAGED_CONCEPTS`).

    Raises ``KeyError`` naming the packaged names when there is none called ``name``.
    """
    if name not in PACKAGED_CONCEPTS:
        raise KeyError(f"no packaged concepts file {name!r}; packaged: {packaged_names()}")
    return _HERE / PACKAGED_CONCEPTS[name][0]


def packaged_names() -> str:
    """Return the packaged names, comma-separated (for help texts and errors)."""
    return ", ".join(PACKAGED_CONCEPTS)


def resolve_concepts(source: str | os.PathLike[str]) -> Path:
    """Return ``source`` as a path: itself when it exists or is not a packaged name, else the
    packaged file of that name."""
    path = Path(source)
    if path.exists() or os.fspath(source) not in PACKAGED_CONCEPTS:
        return path
    return concepts_file(os.fspath(source))
