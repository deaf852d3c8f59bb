"""CLI command groups, one module per part of the library; each has ``register(app)``."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

PLUGIN_OPTION = typer.Option(
    "--plugin",
    help="Import this module (or .py file) first, so the methods, attacks and metrics it "
    "registers can be named (repeatable).",
)


def print_json(data: Any) -> None:
    """Write ``data`` to stdout as indented JSON (``--json`` output: stdout alone, pipeable)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
