"""Corpus sources for the activation atlas: texts streamed from files, folders, JSONL or a
``datasets`` dataset, with a chained sha256 that names the corpus.

A source is one of:

- a text file (``.txt``, ``.md`` or anything else that is UTF-8): each paragraph (blank lines
  separate them) is one text;
- a ``.jsonl`` file: one JSON object per line, its text in ``text_field`` (default ``text``),
  or one JSON string per line;
- a ``.json`` file: a list of strings, or of objects with a ``text_field``;
- a folder: every such file inside it, recursively, in sorted path order;
- ``datasets:NAME[:SPLIT]`` (a dataset ``datasets`` has cached, loaded offline) or a folder
  written by ``Dataset.save_to_disk``; ``datasets`` is imported only then.

The corpus identity is a hash chain over its texts in order: ``h_0 = sha256(b"")`` and, per
text, ``h = sha256(h || len(text) || text)``, so an interrupted run can
check that the texts it skips on resuming are the ones it read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conceptvec.errors import BadTextError
from conceptvec.files import read_bounded

SUFFIXES = (".txt", ".md", ".text", ".jsonl", ".json")
"""File suffixes read from a corpus folder."""
EMPTY_HASH = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Corpus:
    """Where the texts come from: ``source`` as the user gave it and the JSON text field."""

    source: str
    text_field: str = "text"

    def describe(self) -> dict[str, str]:
        """Return the JSON-ready record of the source (kept in the atlas)."""
        return {"source": self.source, "text_field": self.text_field}

    def check(self) -> None:
        """Raise :class:`BadTextError` now if the source is a path that does not exist."""
        if not self.source.startswith("datasets:") and not Path(self.source).expanduser().exists():
            raise BadTextError(
                f"corpus {self.source!r} is neither a file nor a folder; give a text, .jsonl or "
                ".json file, a folder of them, or datasets:NAME"
            )

    def texts(self) -> Iterator[str]:
        """Yield the non-blank texts of the source, in a fixed order."""
        src = self.source
        if src.startswith("datasets:"):
            yield from _dataset_texts(src.removeprefix("datasets:"), self.text_field)
            return
        path = Path(src).expanduser()
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():
                yield from _dataset_texts(str(path), self.text_field, from_disk=True)
                return
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
            )
            if not found:
                raise BadTextError(
                    f"{path} holds no {', '.join(SUFFIXES)} file; point --corpus at text files"
                )
            for p in found:
                yield from _file_texts(p, self.text_field)
            return
        self.check()
        yield from _file_texts(path, self.text_field)


def _file_texts(path: Path, field: str) -> Iterator[str]:
    from conceptvec.activations.texts import TEXT_LIMIT, split_paragraphs

    data = read_bounded(path, BadTextError, "pass a text, .jsonl or .json file", TEXT_LIMIT)
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadTextError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                text = _pick(_parse(line, f"{path}:{n}"), field, f"{path}:{n}")
                if text.strip():
                    yield text
    elif suffix == ".json":
        items = _parse(raw, str(path))
        if not isinstance(items, list):
            raise BadTextError(f"{path} must hold a JSON list of texts or of objects")
        for n, item in enumerate(items):
            text = _pick(item, field, f"{path} item {n}")
            if text.strip():
                yield text
    else:
        yield from split_paragraphs(raw)


def _parse(raw: str, where: str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadTextError(f"{where} is not valid JSON ({e}); fix the line or the file") from None


def _pick(item: object, field: str, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get(field), str):
        return item[field]
    keys = ", ".join(sorted(item)[:8]) if isinstance(item, dict) else type(item).__name__
    raise BadTextError(
        f"{where} has no string field {field!r} (it has {keys}); pass --text-field NAME"
    )


def _dataset_texts(name: str, field: str, from_disk: bool = False) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise BadTextError(
            "reading a `datasets` corpus needs the datasets package; pip install datasets, "
            "or export the texts to a .jsonl file"
        ) from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        if from_disk:
            ds = datasets.load_from_disk(name)
        else:
            repo, _, split = name.partition(":")
            ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as e:  # datasets raises many types for a missing or uncached dataset
        raise BadTextError(
            f"cannot open the dataset {name!r} offline ({type(e).__name__}: {e}); "
            "download it once, or give a local copy"
        ) from None
    if isinstance(ds, dict):  # a DatasetDict saved to disk: take its train split
        ds = ds.get("train") or next(iter(ds.values()))
    if field not in ds.column_names:
        raise BadTextError(
            f"the dataset {name!r} has no column {field!r} (it has "
            f"{', '.join(ds.column_names)}); pass --text-field NAME"
        )
    for row in ds:
        text = row[field]
        if isinstance(text, str) and text.strip():
            yield text


def chain(prev: str, texts: list[str]) -> str:
    """Return the corpus hash after ``texts`` follow a prefix whose hash is ``prev``: per text,
    ``h = sha256(h || len(text) as 8 bytes || text)`` (so the hash does not depend on how the
    texts were grouped into chunks)."""
    h = bytes.fromhex(prev)
    for t in texts:
        b = t.encode("utf-8")
        h = hashlib.sha256(h + len(b).to_bytes(8, "little") + b).digest()
    return h.hex()
