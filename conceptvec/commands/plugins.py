"""CLI group ``plugins``: conceptvec's evaluation inside other harnesses.

``lm-eval`` exports a concept's QA as lm-evaluation-harness tasks
(:func:`conceptvec.plugins.export_lm_eval`); ``open-unlearning`` runs open-unlearning's
eval with the ``conceptvec_intrinsic`` metric (:func:`conceptvec.plugins.open_unlearning.launch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .concepts import Chat, MaxNew

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."

app = typer.Typer(
    no_args_is_help=True,
    help="Plugins: lm-evaluation-harness tasks and an open-unlearning metric.",
)


@app.command("lm-eval")
def lm_eval(
    model: Annotated[str, typer.Argument(help=MODEL_HELP + " Its answers are the references.")],
    concepts: Annotated[
        Path,
        typer.Option("--concepts", help="ConceptVectors JSON, or a packaged name (smollm2-dev)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the tasks (lm_eval --include_path).")
    ],
    concept: Annotated[
        str | None,
        typer.Option("--concept", help="The concept's name (default: the file's only one)."),
    ] = None,
    gold: Annotated[
        Path | None,
        typer.Option("--gold", help="Gold answers: JSON/JSONL of {question, answer} objects."),
    ] = None,
    sets: Annotated[
        str, typer.Option("--sets", help="Comma-separated: forget_qa,unrelated_qa,completion.")
    ] = "forget_qa,unrelated_qa,completion",
    chat: Chat = None,
    max_new_tokens: MaxNew = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Answers per batch.")] = 16,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in --out.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Export a concept's forget QA, unrelated QA and text completion as lm-eval tasks."""
    from conceptvec.commands import print_json
    from conceptvec.plugins import export_lm_eval

    export = export_lm_eval(
        model,
        concepts,
        concept,
        out,
        gold=gold,
        sets=[s.strip() for s in sets.split(",") if s.strip()],
        chat=chat,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        overwrite=overwrite,
    )
    if json_out:
        print_json(export.to_dict())
    else:
        typer.echo(str(export))


@app.command(
    "open-unlearning",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def open_unlearning(
    ctx: typer.Context,
    checkout: Annotated[
        Path, typer.Argument(help="Your open-unlearning checkout (has src/eval.py).")
    ],
) -> None:
    """Run open-unlearning's eval with the conceptvec_intrinsic metric.

    The arguments after CHECKOUT are Hydra overrides, e.g. eval=conceptvec
    eval.conceptvec.metrics.conceptvec_intrinsic.base=BASE
    eval.conceptvec.metrics.conceptvec_intrinsic.concepts=FILE (see docs/plugins.md).
    """
    from conceptvec.plugins.open_unlearning import launch

    launch(checkout, ctx.args)


def register(root: typer.Typer) -> None:
    """Add the ``plugins`` group to ``root``."""
    root.add_typer(app, name="plugins")
