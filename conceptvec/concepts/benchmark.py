"""Read and write the ConceptVectors benchmark format (Hong et al. 2024).

A file is a JSON list of records, one per concept::

    {"ID": 3, "Concept": "Poland", "Layer": "23", "Dim": "743",
     "QA": "[' What is the capital city of Poland?\\n', ...]",
     "unrelated_QA": [...], "text_completion": [{"First_half": ..., "Second_half": ...}],
     "wikipedia_content": "Poland, officially ..."}

The released files differ in how they store values: Layer/Dim as numbers or numeric
strings, QA lists as JSON arrays or as the string form of a Python list (parsed here with
:func:`ast.literal_eval`, never ``eval``), ``ID`` or ``id``, ``Dim`` or ``Dimension``. Each
:class:`ConceptEntry` remembers how its record was stored, so writing it back reproduces
the source file; other keys are kept verbatim in :attr:`ConceptEntry.extra`.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from conceptvec import limits
from conceptvec.data import packaged_names, resolve_concepts
from conceptvec.errors import BadConceptFileError
from conceptvec.files import write_new
from conceptvec.results import Result

MAX_FILE_BYTES = 512 * 2**20
"""Concepts files larger than this are refused before reading (the LLaMA file is ~20 MB)."""

Style = Literal["strings", "plain"]
STYLES: tuple[str, ...] = ("strings", "plain")
"""``strings``: the released LLaMA file (Layer/Dim and QA/unrelated_QA as strings).
``plain``: JSON numbers and arrays (the dev files and the OLMo file)."""

# Roles (field names) whose on-disk value can be a string; ``strings`` style stringifies these.
_STRINGS_ROLES = frozenset({"layer", "dim", "qa", "unrelated_qa"})
_STYLE_ROLES = {"strings": _STRINGS_ROLES, "plain": frozenset()}
_ID_KEYS = ("ID", "id")
_DIM_KEYS = ("Dim", "Dimension")
_FIXED_KEYS = {
    "concept": "Concept",
    "layer": "Layer",
    "qa": "QA",
    "wikipedia_content": "wikipedia_content",
    "text_completion": "text_completion",
    "unrelated_qa": "unrelated_QA",
}
# Field roles in the order a new record writes them.
_CANONICAL = tuple("id concept layer dim qa wikipedia_content text_completion unrelated_qa".split())
_DIGITS = re.compile(rf"[0-9]{{1,{limits.DIGITS}}}")


@dataclass
class TextCompletion:
    """One text-completion probe: the model sees ``first_half`` and should continue it."""

    first_half: str
    second_half: str
    extra: dict[str, object] = field(default_factory=dict)
    """Other keys of the item, kept verbatim."""

    def to_dict(self) -> dict[str, object]:
        """Return the on-disk form: ``{"First_half": ..., "Second_half": ..., **extra}``."""
        return {"First_half": self.first_half, "Second_half": self.second_half, **self.extra}


@dataclass(frozen=True)
class _Format:
    """How one record was stored: key order, which values were strings, their exact text."""

    keys: tuple[str, ...]
    strung: frozenset[str]
    raw: dict[str, tuple[Any, str]]  # role -> (value as parsed, the string in the file)


def _key(role: str, keys: tuple[str, ...] = ()) -> str:
    """Return the on-disk key of a field: the spelling ``keys`` used, else the usual one."""
    options = _ID_KEYS if role == "id" else _DIM_KEYS if role == "dim" else None
    if options is None:
        return _FIXED_KEYS[role]
    return next((k for k in options if k in keys), options[0])


@dataclass
class ConceptEntry(Result):
    """One concept of a ConceptVectors file, with the source model's vector ``Layer``/``Dim``."""

    concept: str
    layer: int | None = None
    """Layer of the source model's concept vector (a ``down`` column)."""
    dim: int | None = None
    """Index of that column within the layer's MLP."""
    qa: list[str] = field(default_factory=list)
    """Questions about the concept."""
    unrelated_qa: list[str] = field(default_factory=list)
    """Questions about other concepts (the specificity control)."""
    text_completion: list[TextCompletion] = field(default_factory=list)
    wikipedia_content: str = ""
    id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other key of the record, verbatim and in file order (our evidence keys go here)."""
    _format: _Format | None = field(default=None, repr=False, compare=False)

    def to_dict(self, style: Style | None = None) -> dict[str, object]:
        """Return the on-disk record, in ``style`` or else as the source file stored it.

        An entry not read from a file uses the ``strings`` style of the released LLaMA file.
        """
        fmt = self._format
        strung = _STYLE_ROLES[_check_style(style)] if style else None
        if strung is None:
            strung = fmt.strung if fmt else _STRINGS_ROLES
        source_keys = fmt.keys if fmt else ()
        keys = {r: _key(r, source_keys) for r in _CANONICAL}
        values = {r: self._value(r, strung) for r in _CANONICAL}
        clash = sorted(set(self.extra) & set(keys.values()))
        if clash:
            raise BadConceptFileError(
                f"concept {_short(self.concept)}: extra key {clash[0]!r} clashes with a field; "
                "set the field instead or rename the extra key"
            )
        role_of = {k: r for r, k in keys.items()}
        out: dict[str, object] = {}
        for k in source_keys:  # the source's keys, in its order
            if k in role_of:
                out[k] = values[role_of[k]]
            elif k in self.extra:
                out[k] = copy.deepcopy(self.extra[k])
        for r in _CANONICAL:  # fields the source lacked: numbers if set, the rest if non-empty
            v = getattr(self, r)
            if r in ("id", "layer", "dim"):
                wanted = v is not None
            else:
                wanted = fmt is None or bool(v) or r in ("concept", "qa")
            if keys[r] not in out and wanted:
                out[keys[r]] = values[r]
        out.update({k: copy.deepcopy(v) for k, v in self.extra.items() if k not in out})
        return out

    def _value(self, role: str, strung: frozenset[str]) -> Any:
        v = getattr(self, role)
        if role in ("id", "layer", "dim"):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise BadConceptFileError(
                    f"concept {_short(self.concept)}: {role} is {v!r}; "
                    "expected a non-negative integer or None"
                )
        elif role in ("qa", "unrelated_qa", "text_completion"):
            kind = TextCompletion if role == "text_completion" else str
            if not isinstance(v, list) or not all(isinstance(x, kind) for x in v):
                raise BadConceptFileError(
                    f"concept {_short(self.concept)}: {role} must be a list of "
                    f"{kind.__name__}, not {_short(v)}"
                )
        elif not isinstance(v, str) or (role == "concept" and not v.strip()):
            what = "a non-empty string" if role == "concept" else "a string"
            raise BadConceptFileError(
                f"concept {_short(self.concept)}: {role} must be {what}, not {_short(v)}"
            )
        if role == "text_completion":
            v = [tc.to_dict() for tc in v]
        if role not in strung or v is None:
            return copy.deepcopy(v)
        raw = self._format.raw.get(role) if self._format else None
        if raw is not None and raw[0] == getattr(self, role):
            return raw[1]  # unchanged: the exact string of the source file
        return repr(v) if isinstance(v, list) else str(v)

    def __str__(self) -> str:
        has_vector = self.layer is not None and self.dim is not None
        vector = f"L{self.layer}.{self.dim}" if has_vector else "no vector"
        head = f"{self.concept} ({vector}" + (f", id {self.id})" if self.id is not None else ")")
        lines = [head]
        if self.qa:
            first = self.qa[0].strip()
            lines.append(f"  QA: {len(self.qa)} questions, e.g. {_short(first, 70)}")
        lines.append(
            f"  unrelated QA: {len(self.unrelated_qa)} · text completions: "
            f"{len(self.text_completion)} · wikipedia_content: {len(self.wikipedia_content):,} chars"
        )
        if self.extra:
            lines.append("  extra: " + ", ".join(self.extra))
        return "\n".join(lines)


def read_concepts(source: str | os.PathLike[str] | list[dict[str, object]]) -> list[ConceptEntry]:
    """Return the concepts of a ConceptVectors JSON file (or of a list of its records).

    ``source`` may also name a packaged file (``"smollm2-dev"``, ``"conceptvectors-dev"``;
    see :mod:`conceptvec.data`); a path that exists wins over a name.
    Raises :class:`~conceptvec.errors.BadConceptFileError` (one line naming the file, record,
    concept and key) for anything that is not a well-formed file of that format.
    """
    if isinstance(source, (str, os.PathLike)):
        where, data = _name(source), _load(resolve_concepts(source))
    elif isinstance(source, list):
        where, data = "<list>", source
    elif isinstance(source, dict):
        raise BadConceptFileError(
            "read_concepts got one record (a dict); pass a list of records, [record]"
        )
    else:
        raise BadConceptFileError(
            f"read_concepts takes a path or a list of records, not {type(source).__name__}"
        )
    if isinstance(data, dict):
        raise BadConceptFileError(
            f"{where}: holds one JSON object, not a list of records; "
            "a ConceptVectors file is a JSON list [{...}, ...]"
        )
    if not isinstance(data, list):
        raise BadConceptFileError(
            f"{where}: holds a JSON {type(data).__name__}, not a list of concept records"
        )
    if not data:
        raise BadConceptFileError(f"{where}: holds an empty list; it needs at least one concept")
    limits.check_count(data, BadConceptFileError, f"{where}: the list of records", limits.RECORDS)
    return [_parse(rec, where, i) for i, rec in enumerate(data)]


def write_concepts(
    entries: Iterable[ConceptEntry],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    style: Style | None = None,
) -> Path:
    """Write ``entries`` as a ConceptVectors JSON file, atomically; return the path.

    ``style=None`` writes each entry as its source file stored it (``strings`` for new
    entries); ``"strings"`` or ``"plain"`` forces one style. An existing file is replaced
    only with ``overwrite=True``. On any error nothing is written.
    """
    path = Path(path)
    entries = list(entries)
    if not entries:
        raise BadConceptFileError(f"{_name(path)}: no concepts to write; pass at least one")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, ConceptEntry):
            raise BadConceptFileError(
                f"{_name(path)}: entry {i} is a {type(entry).__name__}, not a ConceptEntry"
            )
        try:
            records.append(entry.to_dict(style))
        except BadConceptFileError as e:
            raise BadConceptFileError(f"{_name(path)}: entry {i}: {e}") from None
    try:
        text = json.dumps(records, indent=4, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BadConceptFileError(
            f"{_name(path)}: an extra value cannot be stored as JSON ({e}); "
            "use strings, numbers, lists, dicts or None (NaN as None)"
        ) from None
    if not path.parent.is_dir():
        raise BadConceptFileError(f"{_name(path)}: folder {_name(path.parent)} does not exist")
    if path.is_dir():
        raise BadConceptFileError(f"{_name(path)}: is a folder; pass a file path")
    if path.exists() and not overwrite:
        raise BadConceptFileError(f"{_name(path)}: exists; pass overwrite=True to replace it")
    write_new(path, text.encode("utf-8"), overwrite, BadConceptFileError)
    return path


def _load(path: Path) -> Any:
    where = _name(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadConceptFileError(
            f"{where}: does not exist; pass a ConceptVectors JSON file or a packaged name "
            f"({packaged_names()})"
        ) from None
    except OSError as e:
        raise BadConceptFileError(f"{where}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise BadConceptFileError(f"{where}: is {kind}; pass a ConceptVectors JSON file")
    if st.st_size > MAX_FILE_BYTES:
        raise BadConceptFileError(
            f"{where}: is {st.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit "
            "for a concepts file; split it"
        )
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_FILE_BYTES + 1)
        text = blob.decode("utf-8-sig")
    except OSError as e:
        raise BadConceptFileError(f"{where}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise BadConceptFileError(f"{where}: is not UTF-8 text (byte {e.start})") from None
    if len(blob) > MAX_FILE_BYTES:
        raise BadConceptFileError(f"{where}: grew past {MAX_FILE_BYTES:,} bytes while read")
    if not text.strip():
        raise BadConceptFileError(f"{where}: is empty; it needs a JSON list of concept records")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadConceptFileError(
            f"{where}: is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except RecursionError:
        raise BadConceptFileError(f"{where}: is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # a number of more than 4,300 digits
        raise BadConceptFileError(f"{where}: is not valid JSON ({str(e)[:80]})") from None


def _parse(rec: Any, where: str, i: int) -> ConceptEntry:
    if not isinstance(rec, dict):
        raise BadConceptFileError(
            f"{where}: record {i} is a {type(rec).__name__}, not an object with 'Concept' and 'QA'"
        )
    if "Concept" not in rec:
        raise BadConceptFileError(f"{where}: record {i}: missing key 'Concept'; add the name")
    concept = rec["Concept"]
    if not isinstance(concept, str) or not concept.strip():
        raise BadConceptFileError(
            f"{where}: record {i}: key 'Concept' is {_short(concept)}; expected a non-empty string"
        )
    at = f"{where}: record {i} ({_short(concept)})"
    if "QA" not in rec:
        raise BadConceptFileError(f"{at}: missing key 'QA'; add the list of questions")
    strung: set[str] = set()
    raw: dict[str, tuple[Any, str]] = {}
    keys = tuple(rec)
    fields: dict[str, Any] = {}
    for role in ("id", "layer", "dim"):
        fields[role] = _number(rec, _key(role, keys), role, at, strung, raw)
    for role in ("qa", "unrelated_qa", "text_completion"):
        fields[role] = _list(rec, _key(role, keys), role, at, strung, raw)
    wiki = limits.check_text(
        rec.get("wikipedia_content", ""), BadConceptFileError, f"{at}: key 'wikipedia_content'"
    )
    if not isinstance(wiki, str):
        raise BadConceptFileError(
            f"{at}: key 'wikipedia_content' is {_short(wiki)}; expected a string"
        )
    used = {_key(r, keys) for r in _CANONICAL}
    extra = {k: copy.deepcopy(v) for k, v in rec.items() if k not in used}
    return ConceptEntry(
        concept=concept,
        wikipedia_content=wiki,
        extra=extra,
        _format=_Format(keys, frozenset(strung), raw),
        **fields,
    )


def _number(rec, key, role, at, strung, raw) -> int | None:
    v = rec.get(key)
    if v is None:
        return None
    if isinstance(v, str) and _DIGITS.fullmatch(v):
        strung.add(role)
        raw[role] = (int(v), v)
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise BadConceptFileError(
        f'{at}: key {key!r} is {_short(v)}; expected a non-negative integer such as 23 or "23"'
    )


def _list(rec, key, role, at, strung, raw) -> list:
    v = rec.get(key, [])
    text = None
    if isinstance(v, str):
        text = limits.check_text(
            v, BadConceptFileError, f"{at}: key {key!r}", limits.LIST_STRING_CHARS
        )
        try:
            v = ast.literal_eval(v)  # literals only: a call or a name is a ValueError
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            v = None
    what = "objects with First_half/Second_half" if role == "text_completion" else "strings"
    limits.check_count(v, BadConceptFileError, f"{at}: key {key!r}", limits.LIST_ITEMS)
    for j, x in enumerate(v if isinstance(v, list) else []):
        for part in x.values() if isinstance(x, dict) else [x]:
            limits.check_text(part, BadConceptFileError, f"{at}: key {key!r} item {j}")
    if not isinstance(v, list):
        found = f"the string {_short(text)}" if text is not None else _short(v)
        raise BadConceptFileError(
            f"{at}: key {key!r} is {found}, not a list of {what}; "
            "store a JSON list or the string form of a Python list"
        )
    if role == "text_completion":
        v = [_completion(item, key, at, j) for j, item in enumerate(v)]
    elif not all(isinstance(x, str) for x in v):
        bad = next(x for x in v if not isinstance(x, str))
        raise BadConceptFileError(f"{at}: key {key!r} holds {_short(bad)}; expected strings")
    else:
        v = list(v)
    if text is not None:
        strung.add(role)
        raw[role] = (copy.deepcopy(v), text)
    return v


def _completion(item: Any, key: str, at: str, j: int) -> TextCompletion:
    halves = ("First_half", "Second_half")
    if not isinstance(item, dict) or not all(isinstance(item.get(h), str) for h in halves):
        raise BadConceptFileError(
            f"{at}: key {key!r} item {j} is {_short(item)}; "
            "expected {'First_half': str, 'Second_half': str}"
        )
    rest = {k: copy.deepcopy(x) for k, x in item.items() if k not in halves}
    return TextCompletion(item["First_half"], item["Second_half"], rest)


def _check_style(style: str) -> str:
    if style not in _STYLE_ROLES:
        raise BadConceptFileError(f"unknown style {style!r}; use one of {', '.join(STYLES)}")
    return style


def _short(value: object, limit: int = 50) -> str:
    """Return ``repr(value)`` on one line, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _name(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return repr(text) if any(c in text for c in "\r\n") else text
