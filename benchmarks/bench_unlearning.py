"""Seconds per training step and peak memory of each unlearning method and scope.

    OMP_NUM_THREADS=1 python benchmarks/bench_unlearning.py --model smollm2-135m \
        --steps 3 --out benchmarks/results/unlearning-smollm2-cpu.json
    python benchmarks/bench_unlearning.py --threads-only     # 1 vs 2 torch threads

Each (method, scope) runs in a fresh subprocess (``conceptvec.unlearn`` with ``--no-eval``
semantics: ``evaluate=False``), so peak RSS (CPU) or ``torch.cuda.max_memory_allocated``
(GPU) belongs to that run alone. Seconds per step is wall time of the training steps after
the first (the first includes allocation), from the record's history timing. The table is
printed and written as JSON with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conceptvec" / "data" / "conceptvectors_dev_sample.json"
METHODS = ["ga", "gd", "npo", "npo-gd", "npo-kl", "simnpo", "dpo", "rmu", "needle"]
SCOPES = ["full", "down", "layers:20-29", "vector"]

CHILD = r"""
import json, resource, sys, time, torch
import conceptvec
from conceptvec.unlearning import train

a = json.loads(sys.argv[1])
stamps = []
orig = train.Progress.on_step_end
def timed(self, *x, **k):
    stamps.append(time.perf_counter())
    return orig(self, *x, **k)
train.Progress.on_step_end = timed
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
r = conceptvec.unlearn(a["model"], "Ancient Rome", a["method"], concepts=a["concepts"],
    scope=a["scope"], neuron=a["neuron"], steps=a["steps"], batch_size=a["batch"],
    max_length=a["max_length"], forget_qa=a["forget_qa"], evaluate=False, progress=False,
    threads=a["threads"])
gaps = [t2 - t1 for t1, t2 in zip(stamps, stamps[1:])]
peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print("RESULT " + json.dumps({"s_per_step": sum(gaps) / max(len(gaps), 1),
    "peak_bytes": peak, "wall": r.record["wall_seconds"],
    "trainable": r.record.get("trainable_parameters")}))
"""


def run_one(args, method: str, scope: str | None, threads: int) -> dict:
    spec = dict(model=args.model, method=method, scope=scope, neuron=args.neuron,
                concepts=str(args.concepts), steps=args.steps, batch=args.batch,
                max_length=args.max_length, forget_qa=args.forget_qa,
                threads=threads)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True,
                       text=True, env=env)  # fmt: skip
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        err = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "scope": scope, "error": err[:200]}
    out = json.loads(line[7:])
    return {"method": method, "scope": scope or "default", "threads": threads,
            "process_seconds": time.time() - t, **out}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concepts", type=Path, default=SAMPLE)
    ap.add_argument("--neuron", default="L29.1518", help="The Rome vector of SmolLM2.")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument(
        "--forget-qa",
        default="heldout",
        help="heldout | all | none: 'none' trains on text only and skips generating the base "
        "answers of the training questions (about a minute of setup per run on a CPU)",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--scopes", default=",".join(SCOPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threads-only", action="store_true", help="gd/full at 1 and 2 threads.")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    if args.threads_only:
        for threads in (1, 2, 1, 2):
            rows.append(run_one(args, "gd", "full", threads))
            print(rows[-1], flush=True)
    else:
        for method in args.methods.split(","):
            scopes = [None] if method in ("rmu", "needle") else args.scopes.split(",")
            for scope in scopes:
                rows.append(run_one(args, method, scope, args.threads))
                r = rows[-1]
                if "error" in r:
                    print(f"{method:<8} {scope or 'default':<14} error: {r['error']}", flush=True)
                else:
                    print(f"{method:<8} {r['scope']:<14} {r['s_per_step']:7.2f} s/step  "
                          f"peak {r['peak_bytes'] / 2**30:6.2f} GiB", flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
