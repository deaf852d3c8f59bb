"""Texts from a file: paragraphs of a text file, or a JSON list of strings.

A text file's paragraphs (separated by blank lines) are separate texts; a ``.json`` file
holds a list of strings; ``-`` reads standard input (as text, or as JSON when it starts
with ``[``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from conceptvec.errors import BadTextError
from conceptvec.files import read_bounded

TEXT_LIMIT = 256 << 20
"""The largest text file read: 256 MiB."""
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_paragraphs(text: str) -> list[str]:
    """Return the non-blank paragraphs of ``text`` (blank lines separate them).

    >>> split_paragraphs("A dog.\\nIt barked.\\n\\n\\nA cat.\\n")
    ['A dog.\\nIt barked.', 'A cat.']
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]


def _from_json(raw: str, where: str) -> list[str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadTextError(f"{where} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
        raise BadTextError(f'{where} must hold a JSON list of strings, like ["text", ...]')
    texts = [t for t in data if t.strip()]
    if not texts:
        raise BadTextError(f"{where} holds no non-empty text")
    return texts


def read_texts(path: str | Path) -> list[str]:
    """Return the texts in ``path`` (``-``: standard input); raise BadTextError, naming the
    file, if it is missing, unreadable, malformed or empty."""
    where = "standard input" if str(path) == "-" else str(path)
    if str(path) == "-":
        raw = sys.stdin.read()
        is_json = raw.lstrip().startswith("[")
    else:
        p = Path(path)
        data = read_bounded(p, BadTextError, "pass a text file or a .json list", TEXT_LIMIT)
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadTextError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        is_json = p.suffix.lower() == ".json"
    if is_json:
        return _from_json(raw, where)
    texts = split_paragraphs(raw)
    if not texts:
        raise BadTextError(f"{where} is empty; put some text in it")
    return texts
