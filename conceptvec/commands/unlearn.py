"""CLI command ``unlearn``: make an unlearned checkpoint (calls :func:`conceptvec.unlearn`).

Under ``torchrun --nproc-per-node N -m conceptvec.cli unlearn ...`` (or ``accelerate
launch``) the same command trains with DDP (gloo on CPU) or FSDP; ``--batch-size`` is the
global batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import PLUGIN_OPTION

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."
METHOD_NAMES = "ga|gd|npo|npo-gd|npo-kl|simnpo|dpo|rmu|needle|edit, or one a --plugin registers"


def _hparams(pairs: list[str] | None) -> dict:
    from conceptvec.unlearning import UnlearningError

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UnlearningError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set beta=0.2")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def unlearn(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    concept: Annotated[
        str, typer.Option("--concept", help="A concept name (in --concepts) or a one-concept file.")
    ],
    method: Annotated[str, typer.Option("--method", help=METHOD_NAMES)],
    concepts: Annotated[
        Path | None,
        typer.Option(
            "--concepts",
            help="ConceptVectors JSON (or a packaged name: conceptvectors-dev): the concept and "
            "retain concepts.",
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", help="full | down | down:A-B | layers:A-B | vector [method's]"),
    ] = None,
    neuron: Annotated[
        str | None,
        typer.Option("--neuron", help="The concept vector: L29.1518, 'file' or 'find'."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps.")] = 50,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate [method's].")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Global batch.")] = 4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder [unlearned-CONCEPT-METHOD].")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
    forget: Annotated[
        Path | None, typer.Option("--forget", help="More forget data: text lines or JSONL Q/A.")
    ] = None,
    retain: Annotated[
        Path | None, typer.Option("--retain", help="More retain data: text lines or JSONL Q/A.")
    ] = None,
    forget_qa: Annotated[
        str, typer.Option("--forget-qa", help="Concept QA in training: heldout | all | none.")
    ] = "heldout",
    max_length: Annotated[int, typer.Option("--max-length", min=8, help="Tokens/example.")] = 512,
    save_every: Annotated[
        int, typer.Option("--save-every", min=0, help="Resumable checkpoint every N steps.")
    ] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last run.")] = False,
    stop_loss: Annotated[
        float | None, typer.Option("--stop-loss", help="Stop once the loss is <= this.")
    ] = None,
    no_eval: Annotated[
        bool, typer.Option("--no-eval", help="Skip the held-out QA before/after.")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads.")] = None,
    hparam: Annotated[
        list[str] | None, typer.Option("--set", help="Method hyperparameter KEY=VALUE.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    plugin: Annotated[list[str] | None, PLUGIN_OPTION] = None,
) -> None:
    """Unlearn a concept with a published method; write an HF checkpoint + unlearning.json."""
    from conceptvec.commands import print_json
    from conceptvec.registry import load_plugins
    from conceptvec.unlearning import METHODS
    from conceptvec.unlearning import unlearn as run

    load_plugins(plugin or ())
    METHODS.check([method])  # an unknown name fails here, before the model loads

    if out is None:
        slug = "".join(c if c.isalnum() else "-" for c in Path(concept).stem.lower()).strip("-")
        out = Path(f"unlearned-{slug}-{method}")
    result = run(
        model,
        str(concept),
        method,
        concepts=concepts,
        scope=scope,
        neuron=neuron,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        out=out,
        overwrite=overwrite,
        forget_file=forget,
        retain_file=retain,
        forget_qa=forget_qa,
        max_length=max_length,
        save_every=save_every,
        resume=resume,
        stop_loss=stop_loss,
        evaluate=not no_eval,
        threads=threads,
        progress=not json_out,
        **_hparams(hparam),
    )
    from conceptvec.distributed import is_main_process

    if not is_main_process():
        return  # under torchrun only the main process reports
    if json_out:
        print_json(result.to_dict())
    else:
        typer.echo(str(result))


def register(root: typer.Typer) -> None:
    """Add the ``unlearn`` command to ``root``."""
    root.command("unlearn")(unlearn)
