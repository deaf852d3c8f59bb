"""What the benchmarks share: their command line, a child process timed, and the result
printed and written as JSON."""

from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conceptvec.atlas.store import atomic_write


def command() -> str:
    """The command line that runs this benchmark, quoted so that it can be pasted again."""
    return shlex.join(["python", *sys.argv])


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result`` as indented JSON and, with ``path``, write it there (folders made)."""
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (text + "\n").encode())  # never a half-written result


def timed_run(args: list[str], **kw: Any) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``args`` in a fresh process (``subprocess.run`` keywords ``kw``); return (wall
    seconds, the child's CPU seconds (user + system), the completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(args, **kw)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, done
