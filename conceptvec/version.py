"""The installed conceptvec's version, read from the package metadata (one source: pyproject)."""

from __future__ import annotations

import importlib.metadata


def package_version() -> str:
    """Return conceptvec's version (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("conceptvec")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
