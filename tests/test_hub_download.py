"""A hub id that is not cached is downloaded (safetensors only) and the user is told so.

The hub is a loopback server (tests/fake_hub.py) speaking the endpoints that
huggingface_hub's real client calls; conceptvec runs in a subprocess so that HF_ENDPOINT
and HF_HOME take effect at import.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .fake_hub import COMMIT, FakeHub

pytestmark = pytest.mark.slow  # a subprocess against a loopback hub


@pytest.fixture
def hub(tiny_dir):
    server = FakeHub.from_folder(
        "some-org/tiny-gpt2", tiny_dir("gpt2"), extra={"pytorch_model.bin": b"a pickle"}
    )
    yield server
    server.close()


def _conceptvec(args, hub, home, offline=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "conceptvec.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_uncached_hub_id_downloads_once_and_says_so(hub, tmp_path):
    first = _conceptvec(["info", "some-org/tiny-gpt2", "--json"], hub, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "not in the local cache; downloading it from the Hugging Face Hub" in first.stderr
    assert f'"revision": "{COMMIT}"' in first.stdout and '"family": "gpt2"' in first.stdout
    assert "model.safetensors" in hub.requested and "config.json" in hub.requested
    assert "pytorch_model.bin" not in hub.requested  # never fetch pickles

    hub.requested.clear()
    again = _conceptvec(
        ["neuron", "some-org/tiny-gpt2", "L0.1", "--k", "2"], hub, tmp_path, offline=True
    )
    assert again.returncode == 0, again.stderr
    assert "downloading" not in again.stderr and hub.requested == []
    assert "L0.1 (down)" in again.stdout
