"""``--help`` in click's plain style on every typer of the pinned range.

typer 0.2x writes ``--probs <bool>`` after flags (so users type ``--probs true``),
``<list[str]>`` after repeatable options and ``{model}`` for required arguments. This puts
back what typer 0.19 and click print: no type after a flag, ``TEXT``/``INTEGER RANGE``/``PATH``
after an option, ``MODEL`` for an argument. It replaces two display methods of typer's own
parameter classes (named in ``pyproject.toml``'s typer range) and leaves anything it does
not find alone; ``tests/test_cli_help.py`` holds it on the installed typer.
"""

from __future__ import annotations

from typing import Any

_CLICK_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH",
                "int range": "INTEGER RANGE", "float range": "FLOAT RANGE", "bool": ""}  # fmt: skip


def _click_name(typer_label: str) -> str:
    """``<int range>`` -> ``INTEGER RANGE``, ``<list[str]>`` -> ``TEXT``; others as they are."""
    label = typer_label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return _CLICK_NAMES.get(label, label)


def _option_type(self: Any, ctx: Any) -> str | None:
    if self.is_flag or self.count:
        return None  # a flag takes no value
    if self.metavar is not None:
        return str(self.metavar)
    return _click_name(self.display_type(ctx)) or None


def _argument_usage(self: Any) -> str:
    name = self.metavar or self.name.upper()
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def _argument_type(self: Any, ctx: Any) -> str | None:
    return str(self.metavar) if self.metavar is not None else _click_name(self.display_type(ctx))


def plain_help() -> None:
    """Make typer's help print click's metavars (idempotent; a no-op on typer < 0.20)."""
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich"):
        option.display_type_rich = _option_type
    if argument is not None and hasattr(argument, "_usage_display_name"):
        argument._usage_display_name = _argument_usage
        if hasattr(argument, "display_type_rich"):
            argument.display_type_rich = _argument_type
