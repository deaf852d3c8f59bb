"""kill -9 during ``map``, then the same command again: the atlas ends byte-identical to an
uninterrupted one, with no temporary file left and no demand for --overwrite (issue 12, 8).

Two kills run by default (the test is marked ``slow``); ``CONCEPTVEC_SLOW=1`` runs twenty.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conceptvec.atlas import Atlas, build_atlas

TRIALS = 20 if os.environ.get("CONCEPTVEC_SLOW") == "1" else 2

CHILD = """
import sys
from conceptvec.atlas import build_atlas
print("ready", flush=True)
build_atlas(sys.argv[1], sys.argv[2], k=5, progress=False)
"""


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """A tiny Llama with 12 layers and 256 neurons a layer, so a run lasts long enough to kill."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=12,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("deep") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in (folder / "shards").iterdir()}
    files["vocab.json"] = (folder / "vocab.json").read_bytes()
    return files


@pytest.mark.slow
def test_kill_9_then_resume_is_byte_identical(deep_model, tmp_path):
    reference = tmp_path / "reference"
    build_atlas(str(deep_model), reference, k=5, progress=False)
    expected = _contents(reference)
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(TRIALS):
        out = tmp_path / f"run{trial}"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(deep_model), str(out)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        report = build_atlas(str(deep_model), out, k=5, progress=False)  # no --overwrite
        assert report.complete, f"trial {trial}"
        assert _contents(out) == expected, f"trial {trial}"
        leftovers = [p.name for p in out.rglob("*.tmp")] + [
            p.name for p in out.glob(".conceptvec*")
        ]
        assert leftovers == [], f"trial {trial}: {leftovers}"
        assert Atlas(out).verify() == []
