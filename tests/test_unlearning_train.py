"""Training machinery: determinism, resume after an interruption, and 2 processes (DDP on
gloo) matching 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conceptvec.data import concepts_file
from conceptvec.unlearning import unlearn

SAMPLE = concepts_file("conceptvectors-dev")
FAST = dict(max_length=32, max_new_tokens=4, evaluate=False, progress=False)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_same_seed_same_weights(tiny_dir, tmp_path):
    tiny = tiny_dir("llama")
    kw = dict(concepts=SAMPLE, steps=3, lr=1e-3, batch_size=2, **FAST)
    a = unlearn(tiny, "Ancient Rome", "npo-gd", out=tmp_path / "a", **kw)
    b = unlearn(tiny, "Ancient Rome", "npo-gd", out=tmp_path / "b", **kw)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.record["history"] == b.record["history"]


def test_bf16_mixed_keeps_float32_weights_and_follows_fp32(tiny_dir, tmp_path):
    """bf16-mixed computes in bf16 (other bits than fp32) but keeps float32 weights and
    lands near the fp32 run; the precision is recorded; a bad value is one line."""
    from conceptvec.unlearning import UnlearningError

    tiny = tiny_dir("llama")
    kw = dict(concepts=SAMPLE, steps=4, lr=1e-3, batch_size=2, **FAST)
    runs = {
        p: unlearn(tiny, "Ancient Rome", "gd", out=tmp_path / p, precision=p, **kw)
        for p in ("fp32", "bf16-mixed")
    }
    assert {p: r.record["precision"] for p, r in runs.items()} == {
        "fp32": "fp32",
        "bf16-mixed": "bf16-mixed",
    }
    w32, w16 = _weights(tmp_path / "fp32"), _weights(tmp_path / "bf16-mixed")
    assert all(t.dtype == torch.float32 for t in w16.values())
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)  # autocast did run
    base = _weights(tiny)
    # Adam moves each weight by about lr whatever its gradient's size, so a weight whose
    # gradient is near 0 may step the other way; taken over the model, the two runs agree
    moved = sum(float((w32[k] - base[k]).norm() ** 2) for k in w32) ** 0.5
    apart = sum(float((w16[k] - w32[k]).norm() ** 2) for k in w32) ** 0.5
    assert apart <= 0.25 * moved
    for a, b in zip(runs["fp32"].record["history"], runs["bf16-mixed"].record["history"]):
        assert b["forget"] == pytest.approx(a["forget"], rel=0.02)
        assert b["retain"] == pytest.approx(a["retain"], rel=0.02)
    with pytest.raises(UnlearningError, match="unknown precision 'fp16'"):
        unlearn(tiny, "Ancient Rome", "gd", precision="fp16", **kw)


class _Interrupt(Exception):
    pass


def test_resume_matches_an_uninterrupted_run(tiny_dir, tmp_path, monkeypatch):
    from conceptvec.unlearning import train

    tiny = tiny_dir("llama")
    kw = dict(concepts=SAMPLE, steps=4, lr=1e-3, batch_size=2, save_every=2, **FAST)
    whole = unlearn(tiny, "Ancient Rome", "gd", out=tmp_path / "whole", **kw)

    original = train.Progress.on_step_end

    def stop_at_3(self, args, state, control, **k):
        if state.global_step == 3:
            raise _Interrupt
        return original(self, args, state, control, **k)

    monkeypatch.setattr(train.Progress, "on_step_end", stop_at_3)
    with pytest.raises(_Interrupt):
        unlearn(tiny, "Ancient Rome", "gd", out=tmp_path / "cut", **kw)
    assert not (tmp_path / "cut").exists()  # never a folder that looks complete
    assert (tmp_path / ".cut.run" / "checkpoint-2").is_dir()
    monkeypatch.setattr(train.Progress, "on_step_end", original)
    resumed = unlearn(tiny, "Ancient Rome", "gd", out=tmp_path / "cut", resume=True, **kw)
    assert resumed.record["resumed_from"].endswith("checkpoint-2")
    assert [h["step"] for h in resumed.record["history"]] == [1, 2, 3, 4]
    wa, wb = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    for h1, h2 in zip(whole.record["history"], resumed.record["history"]):
        assert h1["loss"] == pytest.approx(h2["loss"], abs=1e-5)
    assert not (tmp_path / ".cut.run").exists()  # cleaned up after success


def test_stop_loss_stops_early(tiny_dir):
    r = unlearn(
        tiny_dir("llama"), "Ancient Rome", "ga", concepts=SAMPLE, steps=20, lr=1e-2,
        batch_size=2, stop_loss=-6.5, **FAST,
    )  # fmt: skip
    assert r.record["stopped_early"] and r.record["steps_done"] < 20
    assert r.record["final_losses"]["loss"] <= -6.5


def _cli(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    if nproc == 1:
        cmd = [sys.executable, "-m", "conceptvec.cli", *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--standalone", "-m", "conceptvec.cli", *args,
        ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_two_processes_match_one(tiny_dir, tmp_path):
    """DDP over gloo, 2 processes x batch 2, against 1 process x batch 4 (global batch 4)."""
    tiny = tiny_dir("llama")
    common = [
        "unlearn", str(tiny), "--concept", "Ancient Rome", "--concepts", str(SAMPLE),
        "--method", "npo-gd", "--steps", "3", "--lr", "1e-3", "--batch-size", "4",
        "--max-length", "32", "--no-eval", "--json", "--precision", "fp32",
    ]  # fmt: skip
    one = _cli([*common, "--out", str(tmp_path / "one")], 1, tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _cli([*common, "--out", str(tmp_path / "two")], 2, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    base = _weights(tiny)
    moved = [k for k in w1 if not torch.equal(w1[k], base[k])]
    assert moved
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # written once, by the main process, complete: the files its record lists and no
    # temporary, replaced or work folder left beside it
    assert two.stdout.count('"world_size"') == 1, two.stdout[-2000:]
    rec = json.loads((tmp_path / "two" / "unlearning.json").read_text())
    assert rec["world_size"] == 2 and rec["batch_size"] == 4
    assert rec["files"] == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    for k in w1:
        torch.testing.assert_close(loaded[k], w1[k], rtol=1e-4, atol=1e-5)
