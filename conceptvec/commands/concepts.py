"""CLI group ``concepts``: ``find`` (one concept by name) and ``build`` (a ConceptVectors file).

Both call the functions a notebook calls (:func:`conceptvec.concepts.find_concept`,
:func:`conceptvec.concepts.build.build_concepts`) and print their tables or ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from conceptvec.config import FindConfig

from .options import config_options, settings_of

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."

app = typer.Typer(
    no_args_is_help=True,
    help="Concept vectors: find the neurons that hold a concept, and prove it causally.",
)

FIND_OPTIONS: dict[str, dict[str, Any]] = {
    "candidates": {"min": 1},
    "validate": {"min": 0},
    "controls": {"min": 0, "max": 1000},
    "all_controls": {},
    "modes": {"type": str, "default": "zero,mean,noise"},
    "chat": {"show_default": False},
    "max_new_tokens": {"min": 1, "max": 512},
    "matrix": {},
    "k": {"min": 1},
    "max_text_tokens": {"min": 1},
    "seed": {},
}
"""The finder's settings as options of ``find`` and ``build`` (names, help and defaults
come from :class:`conceptvec.config.FindConfig`)."""
Chat = Annotated[
    bool | None,
    typer.Option(
        "--chat/--no-chat",
        help="Ask through the chat template (default: when the model has one) or the "
        "paper's 'Question: ...\\n Answer:' prompt.",
        show_default=False,
    ),
]
MaxNew = Annotated[
    int, typer.Option("--max-new-tokens", min=1, max=512, help="Length of each greedy answer.")
]


def read_questions(path: str) -> list[str]:
    """Return the questions in a file: one per line, or a ``.json`` list of strings."""
    from conceptvec.activations.texts import read_texts
    from conceptvec.errors import BadTextError

    if Path(path).suffix.lower() == ".json" or path == "-":
        return read_texts(path)
    lines = [q.strip() for text in read_texts(path) for q in text.splitlines() if q.strip()]
    if not lines:
        raise BadTextError(f"{path} holds no question; write one per line")
    return lines


def concept_record(source: str, name: str):
    """Return the record of concept ``name`` (any case) in a ConceptVectors file or packaged
    name; a one-line error lists the file's concepts when it is not there."""
    from conceptvec.concepts import read_concepts
    from conceptvec.errors import ConceptSearchError, listing

    entries = read_concepts(source)
    found = [e for e in entries if e.concept.lower() == name.strip().lower()]
    if not found:
        names = listing([e.concept for e in entries])
        raise ConceptSearchError(f"no concept {name!r} in {source}; it has {names}")
    return found[0]


def reference_names(text: str) -> list[str]:
    """Return the concept names of a ConceptVectors file or packaged name, else of a comma
    list."""
    from conceptvec.concepts import read_concepts
    from conceptvec.data import resolve_concepts

    if text.lower().endswith(".json") or resolve_concepts(text).is_file():
        return [e.concept for e in read_concepts(text)]
    return [n.strip() for n in text.split(",") if n.strip()]


def _modes(text: str) -> list[str]:
    from conceptvec.concepts.find import MODES
    from conceptvec.errors import ConceptSearchError

    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConceptSearchError(f"unknown knockout mode {bad or text!r}; use {','.join(MODES)}")
    return modes


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The finder's settings as both commands pass them (modes checked first)."""
    out = settings_of(FindConfig, settings)
    out["modes"] = _modes(out["modes"])
    out["validate"] = min(out["validate"], out["candidates"])
    return out


@app.command()
@config_options(FindConfig, FIND_OPTIONS)
def find(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    name: Annotated[str, typer.Argument(help='The concept, e.g. "Ancient Rome".')],
    qa: Annotated[
        str | None, typer.Option("--qa", help="Questions about the concept (one per line).")
    ] = None,
    unrelated_qa: Annotated[
        str | None,
        typer.Option("--unrelated-qa", help="Unrelated questions (default: everyday ones)."),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help="Text about the concept (paragraphs, or a .json list)."),
    ] = None,
    concepts: Annotated[
        str | None,
        typer.Option(
            "--concepts",
            help="A ConceptVectors file or packaged name (conceptvectors-dev) holding the "
            "concept: its QA, article and first 10 unrelated questions, where --qa, --text and "
            "--unrelated-qa are not given.",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Other concepts to check candidates against: a ConceptVectors file or packaged "
            "name (conceptvectors-dev), or names separated by commas. A candidate their own "
            "weight searches rank as well is a category neuron.",
        ),
    ] = None,
    atlas: Annotated[
        Path | None,
        typer.Option(
            "--atlas",
            help="An atlas folder with an activation part (`conceptvec map MODEL --corpus "
            "SOURCE`): candidates whose corpus exemplars hold the concept's words rank up.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    **find_settings: Any,
) -> None:
    """Find the neurons that hold a concept: weights, activations, knockouts, verdicts."""
    from conceptvec.activations.texts import read_texts
    from conceptvec.commands import print_json
    from conceptvec.concepts import find_concept
    from conceptvec.models import load

    questions = read_questions(qa) if qa else []
    others = read_questions(unrelated_qa) if unrelated_qa else None
    texts = read_texts(text) if text else []
    if concepts is not None:  # the record's QA, article and unrelated QA fill what is not given
        record = concept_record(concepts, name)
        questions = questions or record.qa
        texts = texts or ([record.wikipedia_content] if record.wikipedia_content else [])
        others = others or record.unrelated_qa[:10] or None
    settings = _settings(find_settings)
    names = reference_names(reference) if reference else []
    m = load(model, quiet=json_out)
    result = find_concept(
        m,
        name,
        texts=texts,
        qa=questions,
        unrelated_qa=others,
        progress=not json_out,
        reference=names,
        atlas=atlas,
        **settings,
    )
    if json_out:
        print_json(result.to_dict())
    else:
        typer.echo(str(result))


@app.command()
@config_options(FindConfig, FIND_OPTIONS)
def build(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="A ConceptVectors JSON file (any model's) or a packaged name: conceptvectors-dev.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    update: Annotated[
        bool,
        typer.Option(
            help="Rebuild the --concept rows inside an existing output; keep its other rows."
        ),
    ] = False,
    concept: Annotated[
        list[str] | None, typer.Option("--concept", help="Only this concept (repeatable).")
    ] = None,
    unrelated: Annotated[
        int, typer.Option("--unrelated", min=1, help="Unrelated questions used per concept.")
    ] = 10,
    **find_settings: Any,
) -> None:
    """Map each concept of a ConceptVectors file to this model's best validated vector."""
    from conceptvec.concepts.build import build_concepts

    settings = _settings(find_settings)
    results = build_concepts(
        model,
        source,
        out,
        overwrite=overwrite,
        update=update,
        concepts=concept,
        unrelated=unrelated,
        **settings,
    )
    for entry, _search in results:
        x = entry.extra
        where = "-" if entry.layer is None else f"L{entry.layer}.{entry.dim}"
        typer.echo(f"{entry.concept:<32} {where:<10} {x.get('side', '-'):<6} {x['verdict']}")
    typer.echo(f"wrote {out} ({len(results)} concepts {'rebuilt' if update else 'built'})")


def register(root: typer.Typer) -> None:
    """Add the ``concepts`` group to ``root``."""
    root.add_typer(app, name="concepts")
