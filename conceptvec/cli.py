"""The ``conceptvec`` command: a thin layer over the library (heavy imports inside commands).

Every user-fixable problem surfaces as ``error: <one line>`` on stderr with exit code 2;
``--json`` output goes to stdout alone, so it can be piped.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from .commands import print_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find where a language model keeps its knowledge in its MLP neurons.",
)

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."


def _print_version(value: bool) -> None:
    if value:
        from .version import package_version

        typer.echo(f"conceptvec {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Find where a language model keeps its knowledge in its MLP neurons."""


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
    model: Annotated[str, typer.Argument(help=MODEL_HELP + " Or an atlas folder.")],
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
    """Decode MLP neurons through the LM head: their top and bottom tokens.

    Given an atlas folder instead of a model, read the neurons' stored tokens from it.
    """
    from pathlib import Path

    if (Path(model) / "manifest.json").exists():
        results = _atlas_neurons(Path(model), neuron_ids, matrix, k, probs, no_fold)
    else:
        from .decoding import decode
        from .models import load

        results = decode(
            load(model), neuron_ids, matrix=matrix, k=k, fold_norm=not no_fold, probs=probs
        )
    if json_out:
        data = [r.to_dict() for r in results]
        print_json(data[0] if len(data) == 1 else data)
        return
    typer.echo("\n\n".join(str(r) for r in results))


def _atlas_neurons(folder, neuron_ids: list[str], matrix: str, k: int, probs: bool, no_fold: bool):
    """Return the stored decodings of ``neuron_ids`` in the atlas at ``folder`` (first ``k``)."""
    from .atlas import Atlas
    from .errors import AtlasError

    atlas = Atlas(folder)
    if probs:
        raise AtlasError(
            "an atlas stores scores, not probabilities; drop --probs, or decode from the model "
            f"({atlas.model_name}) to get them"
        )
    out = []
    for n in neuron_ids:
        d = atlas.neuron(n, matrix)
        if no_fold and d.recipe.get("fold_norm"):
            raise AtlasError(
                f"this atlas was made with the final norm folded into W_U; drop --no-fold, or "
                f"decode from the model ({atlas.model_name}) with --no-fold"
            )
        d.top, d.bottom = d.top[:k], d.bottom[:k]
        out.append(d)
    return out


def _register_groups() -> None:
    from .commands import activations, atlas, concepts, evaluate, intervene, plugins, unlearn

    atlas.register(app)
    intervene.register(app)
    activations.register(app)
    concepts.register(app)
    unlearn.register(app)
    evaluate.register(app)
    plugins.register(app)


_register_groups()


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Show a warning as one ``warning: ...`` line on stderr (not Python's two-line form)."""
    typer.echo(f"warning: {message}", err=True)


def _show_library_log() -> tuple[logging.Logger, logging.Handler, int]:
    """Send the library's INFO and WARNING messages (``logging.getLogger("conceptvec")``) to
    stderr as ``conceptvec: ...`` lines; return what :func:`main` undoes afterwards."""
    logger = logging.getLogger("conceptvec")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("conceptvec: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    return logger, handler, level


def _click_class(name: str) -> Any:
    """Return click's exception class ``name`` (typer re-exports click, or vendors it)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_USAGE_ERROR = _click_class("UsageError")
_CLICK_ERROR = _click_class("ClickException")


def _end_progress_bars() -> None:
    """Close every live tqdm bar (it clears or ends its line), so an error that stopped a
    loop is printed on a line of its own, not after the bar's text."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    for bar in list(getattr(std.tqdm, "_instances", ())):
        bar.close()


def main() -> None:
    """Run the CLI, turning user-fixable errors into one line and exit code 2."""
    import warnings

    from .commands.help_style import plain_help
    from .errors import ConceptvecError
    from .interrupts import TerminateAsInterrupt

    plain_help()
    logger, handler, level = _show_library_log()
    sigterm = TerminateAsInterrupt()  # SIGTERM runs Ctrl-C's cleanup, then exits 143
    try:
        with warnings.catch_warnings(), sigterm:
            warnings.showwarning = _warning_line
            code = app(standalone_mode=False)  # usage errors come here, not to a rich box
        if sigterm.terminated:
            _end_progress_bars()
            typer.echo("Terminated.", err=True)
            sys.exit(143)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ConceptvecError as e:
        _end_progress_bars()
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except _CLICK_ERROR as e:  # a bad option or argument: one line, exit 2
        _end_progress_bars()
        text = " ".join(e.format_message().split()).rstrip(".")
        usage = isinstance(e, _USAGE_ERROR)
        where = e.ctx.command_path if usage and getattr(e, "ctx", None) else "conceptvec"
        typer.echo(f"error: {text}; see '{where} --help'", err=True)
        sys.exit(2 if usage else e.exit_code)
    except typer.Abort:  # Ctrl-C, or SIGTERM: the same cleanup ran on the way out
        _end_progress_bars()
        if sigterm.terminated:
            typer.echo("Terminated.", err=True)
            sys.exit(143)
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _exit_code(e: SystemExit) -> int | None:
    """Return ``e``'s exit status when it is a plain one (None, an int), else None."""
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else None


def _can_skip_teardown() -> bool:
    """Whether nothing could still need the interpreter's teardown: no other non-daemon
    thread, no live child process, no torch.distributed group left open."""
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return False
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.active_children():
        return False
    dist = sys.modules.get("torch.distributed")
    return not (dist is not None and dist.is_available() and dist.is_initialized())


def run() -> None:
    """The ``conceptvec`` console command: :func:`main`, then leave without the interpreter's
    teardown (about 0.6 s of freeing torch on a 2-core machine) once everything is written.

    Output is flushed and the exit status kept. The fast exit is taken only after a normal
    end or a plain exit status, and only when :func:`_can_skip_teardown`; otherwise (and on
    an unexpected exception, whose traceback Python prints) the interpreter exits as usual.
    """
    import os

    code = 0
    try:
        main()
    except SystemExit as e:
        status = _exit_code(e)
        if status is None or not _can_skip_teardown():
            raise
        code = status
    if not _can_skip_teardown():
        sys.exit(code)
    logging.shutdown()  # flush and close every logging handler
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
