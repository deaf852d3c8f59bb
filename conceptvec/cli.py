"""The ``conceptvec`` command: a thin layer over the library (heavy imports inside commands).

Every user-fixable problem surfaces as ``error: <one line>`` on stderr with exit code 2;
``--json`` output goes to stdout alone, so it can be piped.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find where a language model keeps its knowledge in its MLP neurons.",
)

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


@app.command()
def aliases(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the model aliases and what each resolves to."""
    from .models.aliases import ALIASES, DEFAULT_MODEL

    if json_out:
        print_json({a.name: {"target": a.target, "note": a.note} for a in ALIASES.values()})
        return
    for a in ALIASES.values():
        mark = " (default)" if a.name == DEFAULT_MODEL else ""
        typer.echo(f"{a.name:<24} {a.target:<48} {a.note}{mark}")


@app.command()
def info(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a model's architecture summary: family, layers, d_model, d_mlp, vocab, norms."""
    from .models import load

    summary = load(model).summary()
    if json_out:
        print_json(summary)
        return
    for key, value in summary.items():
        if isinstance(value, list):
            value = ", ".join(value)
        typer.echo(f"{key:<16} {value}")


@app.command()
def neuron(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    neuron_ids: Annotated[
        list[str], typer.Argument(metavar="L.N...", help="Neuron ids, e.g. L12.345.")
    ],
    matrix: Annotated[str, typer.Option("--matrix", "-m", help="up | gate | down")] = "down",
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Tokens to show at each end.")] = 20,
    probs: Annotated[bool, typer.Option("--probs", help="Also show probabilities.")] = False,
    no_fold: Annotated[
        bool, typer.Option("--no-fold", help="Do not fold the final norm's gain into W_U.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Decode MLP neurons through the LM head: their top and bottom tokens."""
    from .decode import decode
    from .models import load

    results = decode(
        load(model), neuron_ids, matrix=matrix, k=k, fold_norm=not no_fold, probs=probs
    )
    if json_out:
        data = [r.to_dict() for r in results]
        print_json(data[0] if len(data) == 1 else data)
        return
    typer.echo("\n\n".join(str(r) for r in results))


def _register_groups() -> None:
    from .commands import activations, atlas, concepts, intervene

    atlas.register(app)
    intervene.register(app)
    activations.register(app)
    concepts.register(app)


_register_groups()


def main() -> None:
    """Run the CLI, turning user-fixable errors into one line and exit code 2."""
    from .errors import ConceptvecError

    try:
        app()  # click's standalone mode handles usage errors (exit 2) and Ctrl-C (exit 1)
    except ConceptvecError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
