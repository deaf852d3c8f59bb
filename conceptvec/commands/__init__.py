"""CLI command groups, one module per part of the library; each has ``register(app)``."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    """Write ``data`` to stdout as indented JSON (``--json`` output: stdout alone, pipeable)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
