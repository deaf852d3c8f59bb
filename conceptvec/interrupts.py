"""SIGTERM handled as Ctrl-C: one mechanism for every command's cleanup.

Every long job already cleans up on ``KeyboardInterrupt`` (temporary folders removed, locks
released, finished shards kept): its ``try/finally`` blocks run. :class:`TerminateAsInterrupt`
makes SIGTERM (``kill``, a scheduler's time limit, ``timeout``) raise :class:`Terminated`, a
``KeyboardInterrupt``, so the same blocks run; the CLI then exits with status 143.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM inside :class:`TerminateAsInterrupt`."""


class TerminateAsInterrupt:
    """A context manager: within it, SIGTERM raises :class:`Terminated` in the main thread
    and sets :attr:`terminated`; the previous handler comes back after. Outside the main
    thread it does nothing (Python delivers signals to the main thread only)."""

    def __init__(self) -> None:
        self.terminated = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, _frame: Any) -> None:
        self.terminated = True
        raise Terminated(f"signal {signum}")

    def __enter__(self) -> TerminateAsInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._old)
            self._installed = False
