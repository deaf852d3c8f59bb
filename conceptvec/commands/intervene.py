"""CLI commands for interventions: ``clamp`` and ``ablate``.

Both call :func:`conceptvec.measure_effect`, the function a notebook calls, and print its
result (a readable report, or ``--json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from conceptvec.errors import BadInterventionError

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."
MODES = ("zero", "mean", "noise")

PromptOpt = Annotated[
    list[str], typer.Option("--prompt", "-p", help="Prompt text (repeat for several).")
]
ChatOpt = Annotated[bool, typer.Option("--chat", help="Apply the model's chat template.")]
TokensOpt = Annotated[
    int, typer.Option("--max-new-tokens", "-n", min=0, help="Greedy tokens to generate (0: none).")
]
TargetsOpt = Annotated[
    list[str] | None,
    typer.Option("--targets", "-t", help='Target token, e.g. " dog" (repeat for several).'),
]
ControlsOpt = Annotated[
    int, typer.Option("--controls", min=0, help="Random same-layer neurons to compare with.")
]
TopOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Top next tokens to show.")]
PositionsOpt = Annotated[str, typer.Option("--positions", help="all | prompt | generated | last")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for controls and noise.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _report(
    model, edits, prompts, targets, controls, top_k, tokens, chat, seed, json_out, before=None
):
    """Measure and print the effect; ``before`` (ablate) is the neurons' activations first."""
    from conceptvec.commands import print_json
    from conceptvec.interventions import measure_effect
    from conceptvec.interventions.edit_specs import check_against

    d = model.dims  # check ids before the torch model is built
    check_against(edits, d.n_layers, d.d_mlp, d.d_model)
    if controls > d.d_mlp:
        raise BadInterventionError(
            f"--controls {controls} is more than a layer's {d.d_mlp} neurons; use at most {d.d_mlp}"
        )
    _check_context(model, prompts, tokens, chat)

    result = measure_effect(
        model,
        prompts,
        edits,
        targets or (),
        controls=controls,
        top_k=top_k,
        generate=tokens,
        chat=chat,
        seed=seed,
        progress=True,
    )
    data = result.to_dict()
    bad = _non_finite(data)
    if bad and "_before" in bad:  # the unedited model already: its weights are the cause
        raise BadInterventionError(
            f"the model's own outputs, before any edit, are not finite ({bad} is NaN or "
            f"infinite): the weights of {model.name} hold NaN or infinity; check or "
            "re-download the checkpoint"
        )
    if bad:
        raise BadInterventionError(
            f"the edited model's outputs are not finite ({bad} is NaN or infinite); the "
            "intervention is too large for this model: use a smaller value or --std"
        )
    if json_out:
        print_json({**data, "activation_before": before} if before is not None else data)
    else:
        if before is not None:
            typer.echo(_activation_text(before) + "\n")
        typer.echo(str(result))


def _activations_before(model, ids, prompts: list[str], mode: str) -> list[dict]:
    """Return each neuron's activation on each prompt (mean over its tokens, and the last)."""
    from conceptvec.activations import read_activations

    acts = read_activations(model, prompts, ids)
    rows = []
    for i, prompt in enumerate(prompts):
        for n in ids:
            v = acts.text_values(i, n)
            rows.append(
                {
                    "prompt": prompt,
                    "neuron": str(n),
                    "mean": float(v.double().mean()) if v.numel() else float("nan"),
                    "last": float(v[-1]) if v.numel() else float("nan"),
                    "tokens": int(v.numel()),
                    "mode": mode,
                }
            )
    return rows


def _activation_text(rows: list[dict]) -> str:
    """Return the ``before the edit`` lines of ``ablate``, with why a sign matters."""
    from conceptvec.tokens import show

    several = len({r["prompt"] for r in rows}) > 1
    lines = []
    for r in rows:
        where = f" on {show(r['prompt'])}" if several else ""
        lines.append(
            f"{r['neuron']} before the edit{where}: mean activation {r['mean']:+.4g} over "
            f"{r['tokens']} prompt tokens (last token {r['last']:+.4g})"
        )
    negative = dict.fromkeys(r["neuron"] for r in rows if r["mode"] == "zero" and r["mean"] < 0)
    for n in negative:
        lines.append(
            f"note: {n} fires negatively here, so it pushes its top tokens down; zeroing it "
            "removes that push and raises its top tokens (and lowers its bottom ones)"
        )
    return "\n".join(lines)


def _check_context(model, prompts: list[str], tokens: int, chat: bool) -> None:
    """Raise if a prompt plus ``tokens`` new tokens would run past the model's context."""
    limit = model.context_length
    if limit is None:
        return
    if tokens > limit:
        raise BadInterventionError(
            f"--max-new-tokens {tokens} is more than the model's context of {limit} tokens"
        )
    tok = model.tokenizer
    if tok is None:
        return
    for prompt in prompts:
        n = len(tok(prompt)["input_ids"]) + (16 if chat else 0)  # a chat template adds a few
        if n + tokens > limit:
            raise BadInterventionError(
                f"the prompt {prompt[:30]!r}... has about {n} tokens; with --max-new-tokens "
                f"{tokens} that is more than the model's context of {limit} tokens: shorten it"
            )


def _non_finite(value, where: str = "result") -> str | None:
    """Return the path of the first NaN or infinite number in ``value``, or None."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return where
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None


def _check_prompts(prompts: list[str]) -> None:
    from conceptvec.errors import BadInterventionError

    if not prompts:
        raise BadInterventionError("no prompt given; pass --prompt TEXT")


def clamp(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    assignments: Annotated[
        list[str], typer.Argument(metavar="L.N=VALUE...", help="Clamps, e.g. L29.808=30.")
    ],
    prompt: PromptOpt = [],  # noqa: B006 (typer reads the default; it is never mutated)
    chat: ChatOpt = False,
    max_new_tokens: TokensOpt = 20,
    targets: TargetsOpt = None,
    controls: ControlsOpt = 0,
    positions: PositionsOpt = "all",
    top_k: TopOpt = 5,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Clamp MLP neurons to values and show what the model does (targets, top tokens, text)."""
    from conceptvec.interventions import clamp as make_clamp
    from conceptvec.interventions import parse_assignment
    from conceptvec.interventions.edit_specs import check_positions
    from conceptvec.models import load

    where = check_positions(positions)
    edits = [make_clamp(*parse_assignment(a), positions=where) for a in assignments]
    _check_prompts(prompt)
    m = load(model, quiet=json_out)
    _report(m, edits, prompt, targets, controls, top_k, max_new_tokens, chat, seed, json_out)


def ablate(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    neurons: Annotated[list[str], typer.Argument(metavar="L.N...", help="Neurons, e.g. L29.808.")],
    prompt: PromptOpt = [],  # noqa: B006
    mode: Annotated[str, typer.Option("--mode", help="zero | mean | noise")] = "zero",
    std: Annotated[float, typer.Option("--std", help="Noise std (mode noise).")] = 0.1,
    relative: Annotated[
        bool, typer.Option("--relative", help="Noise std relative to |v| / sqrt(d_model).")
    ] = False,
    matrix: Annotated[
        str, typer.Option("--matrix", "-m", help="Weights to noise: down | up | gate.")
    ] = "down",
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Text file, one reference text per line (mode mean)."),
    ] = None,
    chat: ChatOpt = False,
    max_new_tokens: TokensOpt = 20,
    targets: TargetsOpt = None,
    controls: ControlsOpt = 0,
    positions: PositionsOpt = "all",
    top_k: TopOpt = 5,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Ablate MLP neurons (zero, mean over reference texts, or noise on their weights)."""
    from conceptvec.errors import BadInterventionError
    from conceptvec.interventions import mean_ablate, noise, zero
    from conceptvec.interventions.edit_specs import Edit, check_positions
    from conceptvec.models import load
    from conceptvec.neurons import NeuronId
    from conceptvec.reference_texts import REFERENCE_TEXTS

    if mode not in MODES:
        raise BadInterventionError(f"unknown --mode {mode!r}: use one of {', '.join(MODES)}")
    _check_prompts(prompt)
    where = check_positions(positions)
    texts: Sequence[str] = REFERENCE_TEXTS
    if reference is not None:
        if not reference.is_file():
            raise BadInterventionError(f"--reference {reference} is not a file")
        texts = [line for line in reference.read_text().splitlines() if line.strip()]
    m = load(model, quiet=json_out)
    ids = [NeuronId.parse(n).check(m.dims.n_layers, m.dims.d_mlp) for n in neurons]
    edits: list[Edit]
    if mode == "zero":
        edits = [zero(n, where) for n in ids]
    elif mode == "mean":
        edits = list(mean_ablate(m, ids, texts, where))
    else:
        edits = [
            noise(n, std, matrix=matrix, relative=relative, seed=seed + i)
            for i, n in enumerate(ids)
        ]
    before = _activations_before(m, ids, prompt, mode)
    _report(
        m, edits, prompt, targets, controls, top_k, max_new_tokens, chat, seed, json_out, before
    )


def register(app: typer.Typer) -> None:
    """Add the intervention commands to ``app``."""
    app.command()(clamp)
    app.command()(ablate)
