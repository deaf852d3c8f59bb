"""Peak memory of ``conceptvec map`` on a Llama-3.2-1B-shaped checkpoint read from disk.

    python benchmarks/make_checkpoint.py --shape llama-3.2-1b --out build/ck-1b
    python benchmarks/bench_atlas_memory.py --checkpoint build/ck-1b --layers 0-2

Runs the real CLI in a child process and reports its peak resident set size (the kernel's
``ru_maxrss``), next to the budget the atlas issue sets: the unembedding (as stored) plus
three layers' MLP weights plus 500 MB. Polling ``/proc/PID/status`` splits the peak into
anonymous memory and file pages mapped from the checkpoint. The naive baseline, loading the
model with transformers and projecting from it, is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
W = (m.lm_head.weight.float() * m.model.norm.weight.float())
for layer in m.model.layers[: int(sys.argv[2])]:
    V = layer.mlp.up_proj.weight.float()
    for block in V.split(512):
        s = block @ W.T
        s.topk(20); s.topk(20, largest=False)
"""


def _poll(pid: int, peak: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
        except (FileNotFoundError, ValueError):
            break
        kb = {k: int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}
        if kb["VmRSS"] > peak.get("VmRSS", 0):
            peak.update(kb)
        time.sleep(0.02)


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; return its wall time, peak RSS (MB) and the split at the peak."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak: dict = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(proc.pid, peak, stop))
    poller.start()
    out, err = proc.communicate()
    stop.set()
    poller.join()
    if proc.returncode:
        sys.exit(f"{cmd} failed:\n{err[-2000:]}")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(max(maxrss, before) / 1024),
        "at_peak_anon_mb": round(peak.get("RssAnon", 0) / 1024),
        "at_peak_file_mb": round(peak.get("RssFile", 0) / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--layers", default="0-2", help="layers to map (peak is reached in layer 1)")
    ap.add_argument("--matrices", default="up,gate,down")
    ap.add_argument("--naive", action="store_true", help="also measure the transformers baseline")
    args = ap.parse_args()

    cfg = json.loads((args.checkpoint / "config.json").read_text())
    d, f, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    bytes_per = 2 if cfg.get("torch_dtype", "bfloat16") in ("bfloat16", "float16") else 4
    unembed_mb = vocab * d * bytes_per / 2**20
    mlp_mb = 3 * d * f * bytes_per / 2**20
    budget = unembed_mb + 3 * mlp_mb + 500
    print(
        f"unembedding {unembed_mb:.0f} MB, one layer's MLP {mlp_mb:.0f} MB, budget {budget:.0f} MB"
    )

    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["conceptvec", "map", str(args.checkpoint), "-o", f"{tmp}/atlas", "--device", "cpu"]
        cmd += ["--layers", args.layers, "--matrices", args.matrices, "--export", "none", "-q"]
        ours = measure(cmd)
    print(f"conceptvec map: {ours}  within budget: {ours['peak_rss_mb'] <= budget}")
    if args.naive:
        from conceptvec.neurons import parse_layers

        n = max(parse_layers(args.layers)) + 1
        naive = measure([sys.executable, "-c", NAIVE, str(args.checkpoint), str(n)])
        print(f"naive transformers script: {naive}")


if __name__ == "__main__":
    main()
