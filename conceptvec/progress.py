"""Progress bars for long stages: one tqdm bar on stderr, silent when asked."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str, on: bool, unit: str = "pass") -> Any:
    """Return a tqdm bar on stderr (a silent one when ``on`` is False); use it as a context."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not on, file=sys.stderr, leave=False)
