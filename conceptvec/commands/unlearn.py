"""CLI command ``unlearn``: make an unlearned checkpoint (calls :func:`conceptvec.unlearn`).

Under ``torchrun --nproc-per-node N -m conceptvec.cli unlearn ...`` (or ``accelerate
launch``) the same command trains with DDP (gloo on CPU) or FSDP; ``--batch-size`` is the
global batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from conceptvec.config import UnlearnConfig

from . import PLUGIN_OPTION
from .options import config_options, settings_of

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
        except (ValueError, RecursionError):  # a word, a 5,000-digit number, deep nesting
            out[key.strip()] = value
    return out


@config_options(
    UnlearnConfig,
    {
        "scope": {},
        "neuron": {},
        "steps": {"min": 1},
        "lr": {},
        "batch_size": {"min": 1},
        "seed": {},
        "forget_file": {"flag": "--forget", "type": Path | None},
        "retain_file": {"flag": "--retain", "type": Path | None},
        "forget_qa": {},
        "holdout": {"min": 0.0, "max": 1.0},
        "max_length": {"min": 8},
        "weight_decay": {"min": 0.0},
        "save_every": {"min": 0},
        "resume": {"flag": "--resume/--no-resume"},
        "keep_checkpoints": {},
        "stop_loss": {},
        "evaluate": {"flag": "--eval"},
        "chat": {},
        "max_new_tokens": {"min": 1},
        "threads": {"min": 1},
        "precision": {},
    },
)
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
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: unlearned-CONCEPT-METHOD)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
    hparam: Annotated[
        list[str] | None, typer.Option("--set", help="Method hyperparameter KEY=VALUE.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    plugin: Annotated[list[str] | None, PLUGIN_OPTION] = None,
    **settings: Any,
) -> None:
    """Unlearn a concept with a published method; write an HF checkpoint + unlearning.json."""
    from conceptvec.commands import print_json
    from conceptvec.registry import load_plugins
    from conceptvec.unlearning import METHODS
    from conceptvec.unlearning import unlearn as run

    load_plugins(plugin or ())
    METHODS.check([method])  # an unknown name fails here, before the model loads

    if out is None:
        from conceptvec.files import short_name

        slug = "".join(c if c.isalnum() else "-" for c in Path(concept).stem.lower()).strip("-")
        out = Path(f"unlearned-{short_name(slug)}-{method}")  # a long name is cut, hashed
    config = UnlearnConfig(
        method=method, hparams=_hparams(hparam), **settings_of(UnlearnConfig, settings)
    )
    result = run(
        model, str(concept), config=config, concepts=concepts, out=out, overwrite=overwrite,
        progress=not json_out,
    )  # fmt: skip
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
