"""``build_concepts``: map every concept of a ConceptVectors file to *this* model's vector.

Each concept runs through :func:`find_concept` with its own Wikipedia text, QA and unrelated
QA. The output file keeps the input's format and records: ``Layer``/``Dim`` now name this
model's best vector (a ``concept`` verdict first, else the best validated candidate; after
the run a neuron that is a candidate of two concepts is a ``category`` neuron of both and
nobody's vector, see :mod:`.category`), the
source model's pair moves to ``source_Layer``/``source_Dim``, and the evidence goes into
extra keys (``verdict``, ``matrix``, ``side``, ``model``, ``conceptvec``).

The job resumes: each finished concept is saved (atomically) to ``OUT.partial.json`` beside
the output, and a rerun with the same settings skips what is there. The output is written
atomically at the end, and the partial file removed. With ``update=True`` the named
``concepts`` are rebuilt inside an existing output: their rows are replaced, every other row
is written back as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from conceptvec.errors import BuildError
from conceptvec.neurons import NeuronId
from conceptvec.types import ModelSource

from .benchmark import ConceptEntry, read_concepts, write_concepts
from .category import check_file
from .find import ConceptSearch, find_concept
from .record import ConceptVector

PARTIAL_SUFFIX = ".partial.json"


def pick(search: ConceptSearch) -> ConceptVector | None:
    """Return the vector a built file names for a search: the best ``concept`` verdict, else
    the first validated candidate, else the first candidate (None when there is none)."""
    found = search.validated or search.candidates
    return search.best or (found[0] if found else None)


def entry_for(entry: ConceptEntry, search: ConceptSearch) -> ConceptEntry:
    """Return ``entry`` rewritten to name this model's vector, evidence in extra keys."""
    chosen = pick(search)
    extra = dict(entry.extra)
    extra.update(source_Layer=entry.layer, source_Dim=entry.dim, model=search.model)
    if chosen is None:
        extra.update(verdict="none", conceptvec={"candidates": []})
        return replace(entry, layer=None, dim=None, extra=extra)
    n = NeuronId.parse(chosen.neuron)
    extra.update(
        verdict=chosen.verdict,
        matrix=chosen.matrix,
        side=chosen.weights.side,
        conceptvec={
            "vector": chosen.to_dict(),
            "others": [_other(c) for c in search.candidates if c is not chosen],
            "prompting": search.prompting,
            "settings": search.settings,
            "tokens": search.tokens.to_dict()["core"],
            "key": search.tokens.key,
        },
    )
    return replace(entry, layer=n.layer, dim=n.index, extra=extra)


def _other(c: ConceptVector) -> dict[str, object]:
    """A candidate beside the pick: neuron, side, verdict; the evidence when validated
    (the file-wide category check may name it instead)."""
    out: dict[str, object] = {"neuron": c.neuron, "side": c.weights.side, "verdict": c.verdict}
    if c.verdict != "unvalidated":
        out["evidence"] = c.to_dict()
    return out


def build_concepts(
    model: ModelSource,
    source: str | os.PathLike[str] | Sequence[ConceptEntry],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    update: bool = False,
    concepts: Sequence[str] | None = None,
    unrelated: int = 10,
    progress: bool = True,
    **find: Any,
) -> list[tuple[ConceptEntry, ConceptSearch | None]]:
    """Run :func:`find_concept` on each concept of ``source`` and write ``out``.

    ``concepts`` restricts the run to those names (in the file's order); ``update=True``
    rebuilds them inside the existing ``out``, keeping its other rows as they are (rows it
    lacks are added at the end). ``unrelated`` is how many of each concept's unrelated
    questions are used; other keywords go to :func:`find_concept`. Returns ``(new entry,
    search)`` per concept run (search None when it was resumed from the partial file).
    """
    out = Path(out)
    if update and not out.is_file():
        raise BuildError(f"{out} does not exist, so there is nothing to update; drop --update")
    if out.exists() and not (overwrite or update):
        raise BuildError(
            f"{out} exists; pass --overwrite to replace it, or --update with --concept NAME "
            "to rebuild some of its rows"
        )
    if not out.parent.is_dir():
        raise BuildError(f"the folder of {out} does not exist; create it first")
    kept = read_concepts(out) if update else []  # a bad file fails before the long run
    entries = read_concepts(source) if isinstance(source, (str, os.PathLike)) else list(source)
    if concepts:
        missing = sorted(set(concepts) - {e.concept for e in entries})
        if missing:
            raise BuildError(f"no concept named {', '.join(missing)} in the file")
        entries = [e for e in entries if e.concept in set(concepts)]
    from conceptvec.models import Model, load

    m = model if isinstance(model, Model) else load(model)
    key = {"model": m.name, "unrelated": unrelated, **{k: repr(v) for k, v in find.items()}}
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    done = _resume(partial, key)
    from tqdm.auto import tqdm

    results: list[tuple[ConceptEntry, ConceptSearch | None]] = []
    bar = tqdm(entries, desc="concepts", unit="concept", disable=not progress)
    for e in bar:
        bar.set_postfix_str(e.concept)
        if e.concept in done:
            results.append((read_concepts([done[e.concept]])[0], None))
            continue
        search = find_concept(
            m,
            e.concept,
            texts=[e.wikipedia_content] if e.wikipedia_content else [],
            qa=e.qa,
            unrelated_qa=e.unrelated_qa[:unrelated] or None,
            progress=progress,
            **find,
        )
        new = entry_for(e, search)
        results.append((new, search))
        done[e.concept] = new.to_dict()
        _save(partial, {"key": key, "done": done})
    rows = [r[0] for r in results]
    if update:
        built = {e.concept: e for e in rows}
        old = {e.concept for e in kept}
        rows = [built.get(e.concept, e) for e in kept] + [e for e in rows if e.concept not in old]
    rows = check_file(rows)  # category neurons across the whole file; one row per neuron
    checked = {e.concept: e for e in rows}
    results = [(checked[e.concept], search) for e, search in results]
    write_concepts(rows, out, overwrite=overwrite or update)
    partial.unlink(missing_ok=True)  # ours: written by this job under this name
    return results


def _resume(partial: Path, key: dict[str, Any]) -> dict[str, Any]:
    if not partial.exists():
        return {}
    try:
        state = json.loads(partial.read_text(encoding="utf-8"))
        done = state["done"]
        same = state["key"] == key
    except (OSError, ValueError, KeyError, TypeError):
        raise BuildError(
            f"{partial} is not a resumable partial build; delete it to start over"
        ) from None
    if not same:
        raise BuildError(
            f"{partial} was made with other settings ({state['key']}); use the same settings "
            "to resume, or delete it to start over"
        )
    return dict(done)


def _save(path: Path, state: dict[str, object]) -> None:
    from conceptvec.atlas.store import write_json  # synced temporary file, then a rename

    write_json(path, state)
