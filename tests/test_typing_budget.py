"""The package's use of ``typing.Any`` may only shrink (issue 23: fewer ``Any`` than before).

Two counts over ``conceptvec/**/*.py``, the same as these shell commands print:

- lines naming ``Any`` outside import lines:
  ``git grep -w Any -- 'conceptvec/*.py' | grep -v import | wc -l``
- explicit ``Any`` annotations (a parameter, field or return typed ``Any``):
  ``git grep -E ':\\s*Any\\b|->\\s*Any\\b' -- 'conceptvec/*.py' | wc -l``

Each must stay at or below its budget. When you remove ``Any``s, lower the budget to the
new count so it cannot creep back up; to add one, type it precisely instead (see
``conceptvec/types.py`` for the shared names: ``Tokenizer``, ``ModelSource``, ``JSON``).
"""

from __future__ import annotations

import re
from pathlib import Path

import conceptvec

ANY_LINES_BUDGET = 342
ANY_ANNOTATIONS_BUDGET = 220

PACKAGE = Path(conceptvec.__file__).resolve().parent
_WORD = re.compile(r"(?<![A-Za-z0-9_])Any(?![A-Za-z0-9_])")
_ANNOTATION = re.compile(r"(:\s*Any\b|->\s*Any\b)")


def _lines() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(PACKAGE)), line)
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def any_lines() -> list[str]:
    """Return ``file: line`` for each line naming ``Any`` that is not an import line."""
    return [f"{f}: {s.strip()}" for f, s in _lines() if _WORD.search(s) and "import" not in s]


def any_annotations() -> list[str]:
    """Return ``file: line`` for each line with an explicit ``Any`` annotation."""
    return [f"{f}: {s.strip()}" for f, s in _lines() if _ANNOTATION.search(s)]


def test_any_lines_within_budget():
    found = any_lines()
    assert len(found) <= ANY_LINES_BUDGET, (
        f"{len(found)} lines name Any (budget {ANY_LINES_BUDGET}); type the new ones "
        "precisely (conceptvec/types.py) instead of Any"
    )


def test_any_annotations_within_budget():
    found = any_annotations()
    assert len(found) <= ANY_ANNOTATIONS_BUDGET, (
        f"{len(found)} explicit Any annotations (budget {ANY_ANNOTATIONS_BUDGET}); type the "
        "new ones precisely (conceptvec/types.py) instead of Any"
    )


def test_the_counts_see_what_they_count():
    # the patterns match real uses and skip imports and longer names
    text = (
        "from typing import Any\nx: Any = 1\ndef f() -> Any: ...\nAnyway = 2\ny: dict[str, Any]\n"
    )
    lines = [s for s in text.splitlines() if _WORD.search(s) and "import" not in s]
    assert lines == ["x: Any = 1", "def f() -> Any: ...", "y: dict[str, Any]"]
    assert [s for s in text.splitlines() if _ANNOTATION.search(s)] == lines[:2]
