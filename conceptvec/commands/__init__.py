"""CLI command groups, one module per part of the library; each has ``register(app)``."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import typer

PLUGIN_OPTION = typer.Option(
    "--plugin",
    help="Import this module (or .py file) first, so the methods, attacks and metrics it "
    "registers can be named (repeatable).",
)


def print_json(data: Any) -> None:
    """Write ``data`` to stdout as indented JSON (``--json`` output: stdout alone, pipeable).

    A JSON object gains ``config``, the command line it answers (:func:`command_config`),
    unless it records its own already."""
    if isinstance(data, dict) and "config" not in data:
        config = command_config()
        if config is not None:
            data = {**data, "config": config}
    text = json.dumps(finite(data), ensure_ascii=False, indent=2, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")


def finite(data: Any) -> Any:
    """Return ``data`` with every NaN or infinite float (also numpy or 0-d torch scalars)
    replaced by ``None``: the one JSON rule of every ``--json`` output, so none prints a
    bare ``NaN``/``Infinity`` that strict JSON readers refuse."""
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    if getattr(data, "ndim", None) == 0 and hasattr(data, "item"):  # numpy or torch scalar
        data = data.item()
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def command_config() -> dict[str, object] | None:
    """Return the running CLI command and every option and argument it was given (defaults
    filled in), JSON-ready: what its output records as ``config``. None outside the CLI."""
    ctx = _current_context()
    if ctx is None:
        return None
    params = {k: _plain(v) for k, v in ctx.params.items() if k not in ("json_out",)}
    names: list[str] = []
    while ctx.parent is not None:  # the root's name is the program's: left out
        names.append(ctx.info_name)
        ctx = ctx.parent
    return {"command": " ".join(reversed(names)), **params}


def _current_context() -> Any:
    """Return the running command's click context (typer >= 0.25 vendors click as
    ``typer._click``; older typer uses click itself), or None."""
    try:
        from typer._click import globals as found
    except ImportError:  # pragma: no cover - an older typer on plain click
        import click as found  # type: ignore[no-redef]
    return found.get_current_context(silent=True)


def _plain(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
