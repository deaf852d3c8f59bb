"""What the benchmarks share for their output: print the result, and write it as JSON."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any


def command() -> str:
    """The command line that runs this benchmark, quoted so that it can be pasted again."""
    return shlex.join(["python", *sys.argv])


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result`` as indented JSON and, with ``path``, write it there (folders made)."""
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # never a half-written result
        tmp.write_text(text + "\n")
        tmp.replace(path)
