"""The commands in README.md and docs/*.md name real commands and options, and README's run
as written from a clone or a wheel: every file they read is in the repository, packaged
(``conceptvec.data``), or made by an earlier command of the README. Python blocks compile.

Running every command would take the real models hours; this checks what a newcomer hit
(``--qa rome_qa.txt``, ``--from llama2-7b_concepts_dev.json``: files a clone does not have).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from conceptvec.cli import app
from conceptvec.data import PACKAGED_CONCEPTS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
READS = {"--text", "--qa", "--unrelated-qa", "--from", "--concepts", "--probes", "--gold",
         "--reference", "--forget", "--retain"}  # fmt: skip
WRITES = {"--out", "-o", "--html"}
GROUP = typer.main.get_command(app)


def _blocks(path: Path, lang: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
            if m.group(1) == lang]  # fmt: skip


def _commands(block: str) -> list[list[str]]:
    """Each ``conceptvec ...`` command of a shell block, as words (comments dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        parts: list[list[str]] = [[]]
        for word in shlex.split(line, comments=True):
            if word in ("&&", ";"):
                parts.append([])
            else:
                parts[-1].append(word)
        for words in parts:
            if words and words[0] == "conceptvec":
                out.append(words[1:])
            elif words[:1] == ["echo"] and ">" in words:
                out.append(["<echo>", ">", words[words.index(">") + 1]])
    return out


def _resolve(words: list[str]):
    cmd, rest = GROUP, list(words)
    while rest and getattr(cmd, "commands", None) and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    return cmd, rest


CASES = [(p, words) for p in DOCS for block in _blocks(p, "bash") for words in _commands(block)]


@pytest.mark.parametrize(
    "path, words", [c for c in CASES if c[1][0] != "<echo>"], ids=lambda x: getattr(x, "name", "")
)
def test_documented_commands_and_options_exist(path, words):
    cmd, rest = _resolve(words)
    assert not getattr(cmd, "commands", None), f"{path.name}: {words}: no such command"
    if cmd.context_settings.get("ignore_unknown_options"):  # passes the rest on (Hydra)
        return
    names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for w in rest:
        flag = w.strip("[]").split("=")[0]
        if flag.startswith("-") and not re.fullmatch(r"-?[0-9.]+", flag):
            assert flag.split("/")[0] in names, f"{path.name}: {cmd.name} has no option {flag}"


def test_readme_commands_read_only_files_a_clone_or_wheel_has():
    made: set[str] = set()
    for words in [w for p, w in CASES if p.name == "README.md"]:
        for flag, value in zip(words, words[1:]):
            if flag in WRITES or flag == ">":
                made.add(value)
            elif flag in READS and value not in PACKAGED_CONCEPTS and value not in made:
                assert (ROOT / value).exists(), f"README: {' '.join(words)}: {value} is not there"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_compile(path):
    for n, block in enumerate(_blocks(path, "python")):
        compile(block, f"{path.name} block {n}", "exec")
