"""Which process this is when several run one job under ``torchrun``.

Rank 0 writes manifests and reports; the others work and stay quiet. Outside ``torchrun``
there is one process, rank 0.
"""

from __future__ import annotations

import os


def rank() -> int:
    """Return this process's rank (``$RANK``; 0 outside ``torchrun``)."""
    value = os.environ.get("RANK", "0").strip()
    return int(value) if value.isdigit() else 0


def is_main_process() -> bool:
    """Return True for rank 0, the process that writes reports and prints results."""
    return rank() == 0
