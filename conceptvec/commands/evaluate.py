"""CLI command ``eval``: intrinsic evaluation of unlearned checkpoints against their base
(calls :func:`conceptvec.evaluate.intrinsic`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import PLUGIN_OPTION

MODEL_HELP = "The base model: alias, hub id, local folder or .gguf file."


def evaluate(
    base: Annotated[str, typer.Argument(help=MODEL_HELP)],
    unlearned: Annotated[
        list[str], typer.Argument(help="One or more unlearned checkpoints (folders or hub ids).")
    ],
    concepts: Annotated[
        Path,
        typer.Option(
            "--concepts",
            help="ConceptVectors JSON naming the vectors in THIS model (conceptvec concepts build), "
            "or a packaged name: smollm2-dev.",
        ),
    ],
    concept: Annotated[
        list[str] | None, typer.Option("--concept", help="Only this concept (repeatable).")
    ] = None,
    probes: Annotated[
        Path | None,
        typer.Option(
            "--probes", help="ConceptVectors JSON with the QA/text, if --concepts has none."
        ),
    ] = None,
    attacks: Annotated[
        str | None,
        typer.Option(
            "--attacks",
            help="Comma list of registered attacks: recovery, quant4, relearn, or a plugin's "
            "('' for none) [recovery; none with --no-qa].",
        ),
    ] = None,
    no_qa: Annotated[
        bool, typer.Option("--no-qa", help="Weights (and activations) only: no QA, no attacks.")
    ] = False,
    no_trace: Annotated[
        bool, typer.Option("--no-trace", help="Skip the activation trace.")
    ] = False,
    k: Annotated[
        int, typer.Option("--k", min=1, help="Top-k tokens for the Jaccard overlap.")
    ] = 200,
    recipe: Annotated[
        str, typer.Option("--recipe", help="raw (W_U v, ConceptVectors) | folded (final norm).")
    ] = "raw",
    all_jaccard: Annotated[
        bool, typer.Option("--all-jaccard", help="Jaccard@k of every down column too.")
    ] = False,
    controls: Annotated[
        int, typer.Option("--controls", min=0, help="Random same-layer control neurons.")
    ] = 5,
    max_questions: Annotated[
        int | None, typer.Option("--max-questions", min=1, help="At most N questions per probe.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 32,
    relearn_steps: Annotated[int, typer.Option("--relearn-steps", min=1)] = 10,
    relearn_lr: Annotated[float, typer.Option("--relearn-lr")] = 2e-5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the JSON report here.")
    ] = None,
    html_path: Annotated[
        Path | None, typer.Option("--html", help="Write an HTML report here.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out / --html.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    plugin: Annotated[list[str] | None, PLUGIN_OPTION] = None,
) -> None:
    """Did unlearning remove the concept from the weights, or hide it? Weights, activations,
    QA and recovery attacks, per concept vector, against random-neuron controls."""
    from conceptvec.commands import print_json
    from conceptvec.errors import EvaluationError
    from conceptvec.evaluate import ATTACKS, EvalConfig, intrinsic
    from conceptvec.files import check_new
    from conceptvec.registry import load_plugins

    load_plugins(plugin or ())

    if (
        json_path is not None
        and html_path is not None
        and json_path.resolve() == html_path.resolve()
    ):
        raise EvaluationError(f"--out and --html are the same file ({json_path}); name two files")
    for path in (json_path, html_path):  # refuse before minutes of work, not after
        if path is not None:
            check_new(path, overwrite, EvaluationError)
    wanted = ATTACKS.check([a.strip() for a in (attacks or "").split(",") if a.strip()])
    if no_qa and wanted and attacks is not None:
        raise EvaluationError("attacks are measured on the forget QA; drop --attacks or --no-qa")
    if attacks is None and not no_qa:
        wanted = ["recovery"]
    config = EvalConfig(
        names=concept,
        qa=not no_qa,
        trace_activations=not no_trace,
        attacks=wanted,
        k=k,
        recipe=recipe,
        all_jaccard=all_jaccard,
        controls=controls,
        max_questions=max_questions,
        max_new_tokens=max_new_tokens,
        relearn_steps=relearn_steps,
        relearn_lr=relearn_lr,
        seed=seed,
    )
    report = intrinsic(
        base, list(unlearned), concepts, config, probes=probes, progress=not json_out
    )
    if json_path is not None:
        report.write_json(json_path, overwrite=overwrite)
    if html_path is not None:
        report.write_html(html_path, overwrite=overwrite)
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo(str(report))
        for path in (json_path, html_path):
            if path is not None:
                typer.echo(f"wrote {path}", err=True)


def register(root: typer.Typer) -> None:
    """Add the ``eval`` command to ``root``."""
    root.command("eval")(evaluate)
