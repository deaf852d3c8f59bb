"""CLI commands for interventions: ``clamp`` and ``ablate``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the intervention commands to ``app``."""
