"""CLI command ``activations``: a neuron's top (or bottom) activating tokens in context.

It calls :func:`conceptvec.activations.top_contexts`, the function a notebook calls, and
prints its table (or ``--json``).
"""

from __future__ import annotations

from typing import Annotated

import typer

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."


def activations(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    neuron: Annotated[str, typer.Argument(metavar="L.N", help="Neuron id, e.g. L29.808.")],
    text: Annotated[
        str,
        typer.Option(
            "--text",
            help="Text file (paragraphs split at blank lines), .json list of strings, or - "
            "for stdin.",
        ),
    ],
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Tokens to show.")] = 20,
    window: Annotated[
        int, typer.Option("--window", "-w", min=0, help="Context tokens on each side.")
    ] = 8,
    bottom: Annotated[
        bool, typer.Option("--bottom", help="Show the lowest (most negative) activations.")
    ] = False,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=2, help="Longest window read at once.")
    ] = 256,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show where an MLP neuron fires most (or least) in some text, token by token."""
    from conceptvec.activations import read_texts, top_contexts
    from conceptvec.commands import print_json
    from conceptvec.models import load
    from conceptvec.neurons import NeuronId

    texts = read_texts(text)
    m = load(model, quiet=json_out)
    n = NeuronId.parse(neuron).check(m.dims.n_layers, m.dims.d_mlp)  # before building torch
    result = top_contexts(
        m, n, texts, top=top, window=window, bottom=bottom, max_tokens=max_tokens,
        progress=not json_out,
    )  # fmt: skip
    if json_out:
        print_json(result.to_dict())
    else:
        typer.echo(str(result))


def register(app: typer.Typer) -> None:
    """Add the ``activations`` command to ``app``."""
    app.command()(activations)
