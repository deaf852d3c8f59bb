"""What the benchmarks share for their output: print the result, and write it as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result`` as indented JSON and, with ``path``, write it there (folders made)."""
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
