"""Size caps on what a data file may ask conceptvec to hold: one place, one message.

Concepts files and unlearning data come from others. Their total size is capped where they
are read; these caps bound each field, so that one 100 MB string cannot make a parser or a
tokenizer allocate gigabytes. The real ConceptVectors files stay far below every cap
(their longest ``wikipedia_content`` is about 130 K characters).
"""

from __future__ import annotations

from typing import Any

from .errors import ConceptvecError

TEXT_CHARS = 4 << 20
"""The longest single text (a question, an answer, a ``wikipedia_content``): 4 Mi chars."""
LIST_STRING_CHARS = 1 << 20
"""The longest string form of a list (``"['q1', 'q2']"``), parsed with ``ast.literal_eval``."""
LIST_ITEMS = 10_000
"""The most items in one list of questions or texts."""
RECORDS = 100_000
"""The most concept records in one file."""
STEPS = 1_000_000
"""The most training steps of one run (``unlearn --steps``, ``eval --relearn-steps``)."""
SCHEDULE_ROWS = 10_000_000
"""The most samples one unlearning run schedules (steps times the global batch size)."""
DIGITS = 18
"""The most digits of a whole number read from text (a layer, an index, a step count):
Python refuses to convert more than 4,300, with a traceback; no real value needs 19."""


def check_text(value: Any, error: type[ConceptvecError], what: str, limit: int = TEXT_CHARS) -> Any:
    """Return ``value``; raise ``error`` if it is a string longer than ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        raise error(
            f"{what} is {len(value):,} characters, over the {limit:,} allowed; shorten or split it"
        )
    return value


def check_count(items: Any, error: type[ConceptvecError], what: str, limit: int) -> Any:
    """Return ``items``; raise ``error`` if it is a list of more than ``limit`` items."""
    if isinstance(items, list) and len(items) > limit:
        raise error(f"{what} has {len(items):,} items, over the {limit:,} allowed; split it")
    return items
