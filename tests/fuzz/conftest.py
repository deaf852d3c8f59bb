"""Fixtures of the fuzz suite: seed files to mutate and a capped worker process to open them.

The worker (:mod:`tests.fuzz.worker`) runs in its own process with ``RLIMIT_AS`` set, so a
file that makes conceptvec allocate without bound kills an allocation there, not the test
session; a request it does not answer within the time cap counts as a hang.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_tiny
from tests.tiny_gguf import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
MEMORY_CAP_MIB = int(os.environ.get("CONCEPTVEC_FUZZ_MEMORY_MIB", "1024"))
"""Address space the worker may add to what it holds after importing conceptvec."""
TIME_CAP_S = float(os.environ.get("CONCEPTVEC_FUZZ_TIME_S", "30"))
"""Seconds one request may take (a tiny file takes well under one)."""


class Worker:
    """One capped worker process; :meth:`run` sends a request and returns its answer."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "worker.log"

    def start(self) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "CONCEPTVEC_CACHE": str(self.tmp / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "TQDM_DISABLE": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker", str(MEMORY_CAP_MIB)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - lives as long as the process
            text=True,
        )
        ready = self._answer(120)
        assert ready["end"] == "ready", ready

    def _answer(self, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not readable:
            self.stop()
            return {"end": "hang", "detail": f"no answer within {timeout} s"}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"end": "died", "detail": f"worker exited with {code} (memory cap?)"}
        return json.loads(line)

    def run(self, action: str, path: Path, timeout: float = TIME_CAP_S) -> dict:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"action": action, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("fuzz-worker"))
    yield w
    w.stop()


@pytest.fixture(scope="session")
def seeds(tmp_path_factory) -> dict[str, Path]:
    """Return the files the fuzzers start from: a tiny safetensors folder, GGUF and atlas."""
    from conceptvec.atlas import build_atlas

    root = tmp_path_factory.mktemp("fuzz-seeds")
    hf, tok = build_tiny("llama")
    folder = root / "model"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    gguf = write_tiny_gguf(hf, tok, root / "tiny.gguf")
    build_atlas(str(folder), root / "atlas", k=3, progress=False)
    return {"model": folder, "gguf": gguf, "atlas": root / "atlas"}


def assert_clean(answer: dict, what: str) -> None:
    """Fail unless the run ended in success or in a one-line ConceptvecError."""
    assert answer["end"] in ("ok", "error"), f"{what}: {answer['end']}\n{answer['detail']}"
    if answer["end"] == "error":
        assert answer["one_line"], f"{what}: error message spans lines: {answer['detail']}"
