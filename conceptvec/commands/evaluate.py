"""CLI command ``eval``: intrinsic evaluation of unlearned checkpoints against their base
(calls :func:`conceptvec.evaluate.intrinsic`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from conceptvec.config import EvalConfig

from . import PLUGIN_OPTION
from .options import config_options, settings_of

MODEL_HELP = "The base model: alias, hub id, local folder or .gguf file."


@config_options(
    EvalConfig,
    {
        "names": {"flag": "--concept"},
        "metrics": {"type": str, "default": ""},
        "qa": {},
        "trace_activations": {"flag": "--trace"},
        "k": {"min": 1},
        "recipe": {},
        "all_jaccard": {},
        "device": {},
        "controls": {"min": 0},
        "max_questions": {"min": 1},
        "max_new_tokens": {"min": 1},
        "chat": {},
        "relearn_steps": {"min": 1},
        "relearn_lr": {},
        "relearn_precision": {},
        "seed": {},
    },
)
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
            help="Comma list of registered attacks: recovery, patch, quant4, quant4_gguf, relearn, "
            "relearn_heldout, logit_lens, or a plugin's "
            "('' for none; default: recovery, none with --no-qa).",
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the JSON report here.")
    ] = None,
    html_path: Annotated[
        Path | None, typer.Option("--html", help="Write an HTML report here.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out / --html.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    plugin: Annotated[list[str] | None, PLUGIN_OPTION] = None,
    **settings: Any,
) -> None:
    """Did unlearning remove the concept from the weights, or hide it? Weights, activations,
    QA and recovery attacks, per concept vector, against random-neuron controls."""
    from conceptvec.commands import print_json
    from conceptvec.errors import EvaluationError
    from conceptvec.evaluate import ATTACKS, METRICS, intrinsic
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
    no_qa = not settings["qa"]
    wanted = ATTACKS.check([a.strip() for a in (attacks or "").split(",") if a.strip()])
    if no_qa and wanted and attacks is not None:
        raise EvaluationError("attacks are measured on the forget QA; drop --attacks or --no-qa")
    if attacks is None and not no_qa:
        wanted = ["recovery"]
    config = EvalConfig(attacks=wanted, **settings_of(EvalConfig, settings))
    METRICS.check(config.metrics)
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
