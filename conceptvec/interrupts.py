"""SIGTERM handled as Ctrl-C: one mechanism for every command's cleanup.

Every long job already cleans up on ``KeyboardInterrupt`` (temporary folders removed, locks
released, finished shards kept): its ``try/finally`` blocks run. :func:`terminate_as_interrupt`
makes SIGTERM (``kill``, a scheduler's time limit, ``timeout``) raise :class:`Terminated`, a
``KeyboardInterrupt``, so the same blocks run; the CLI then exits with status 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM inside :func:`terminate_as_interrupt`."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the
    main thread; the previous handler comes back after. Outside the main thread it does
    nothing (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
