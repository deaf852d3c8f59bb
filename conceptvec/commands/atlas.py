"""CLI commands for the neuron atlas: ``map``, ``search``, ``diff``, ``export``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the atlas commands to ``app``."""
