"""Every command's ``--help`` in click's plain style: no ``<bool>`` after flags (users typed
``--probs true``), no ``<list[str]>``, no ``{model}``; and no help text eaten by rich markup."""

from __future__ import annotations

import re

import pytest
import typer

from conceptvec.cli import app
from tests.conftest import run_cli


def _commands(group, path=()):
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        yield (*path, name)
        yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_shows_click_metavars(path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli([*path, "--help"], monkeypatch, capsys)
    assert code == 0, err
    for bad in ("<bool>", "<str>", "<int", "<list[", "<path>"):
        assert bad not in out, (bad, out)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    assert not re.search(r"\s\.\s", out), out  # a "[...]" in a help text eaten as markup
    if "--json" in out:
        assert re.search(r"--json\s{2,}\S", out), out  # a flag: nothing between it and its help
