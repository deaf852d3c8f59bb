"""Seconds per unlearning step: a plain float32 loop, conceptvec (fp32 and bf16-mixed), and
the bf16 GEMM floor, on the same real batches in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --steps 3 \\
        --out benchmarks/results/training-smollm2-cpu.json
    python benchmarks/bench_training.py --threads 1,2 --steps 3      # 1 vs 2 torch threads
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --check-steps 25 --batch 2 \\
        --out benchmarks/results/training-smollm2-cpu-check.json     # log p after 25 steps

The data is what ``conceptvec unlearn --method gd --forget-qa none`` trains on for "Ancient
Rome" (its article's chunks as forget text, the other concepts' articles as retain text),
batched as the run batches it (seed 0). Routes, per torch thread count:

- **naive**: the loop a researcher writes with transformers and torch: a float32 model,
  ``torch.optim.AdamW``, ``loss = -model(**forget).loss + 1.5 * model(**retain).loss``,
  backward, clip, step (gradient difference, GD);
- **conceptvec**: ``conceptvec.unlearn(..., "gd", precision=...)`` for ``fp32`` and
  ``bf16-mixed``, from the end of the first step to the end of the last;
- **floor**: the bf16 GEMMs of that step at the model's shapes, timed with reused outputs:
  for every ``nn.Linear`` (the LM head included) and each of the two batches, the forward
  ``[tokens, in] x [in, out]`` and the two backward products (input and weight gradients).
  Attention's own products, norms, the loss and AdamW are not in the floor.

``--check-steps N`` instead trains N steps in fp32 and in bf16-mixed and prints the mean
log p per token, teacher-forced in float32, of held-out forget and retain text for the base
and both results: bf16-mixed passes when each differs from fp32 by at most 5% of the fp32
run's change from the base, or 0.02 nats/token.

Each route reports wall seconds and this process's CPU seconds per step (after the first).
On a machine shared with other jobs, one thread's CPU seconds measure the work; the wall
seconds are what an idle machine would show only when nothing else runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_activation_atlas import cpu_model, load_average

import conceptvec as cv
from conceptvec.data import concepts_file
from conceptvec.models.backends import resolve
from conceptvec.unlearning import train, unlearn
from conceptvec.unlearning.data import StepDataset, collate
from conceptvec.unlearning.inputs import build_sets, resolve_concept

CONCEPT = "Ancient Rome"


def data(model: Any, concepts: Path, steps: int, batch: int, max_length: int) -> tuple:
    """Return (the concept entry without unrelated QA, its sets, the step batches)."""
    entry, others, _, _ = resolve_concept(CONCEPT, concepts)
    entry = dataclasses.replace(entry, unrelated_qa=[])  # nothing to generate
    sets = build_sets(
        resolve(model), entry, others, forget_file=None, retain_file=None, forget_qa="none",
        holdout=0.5, seed=0, max_length=max_length, rows=steps * batch, dpo=False, chat=None,
        max_new_tokens=32,
    )  # fmt: skip
    rows = StepDataset(sets.forget, sets.retain, steps * batch, 0)
    pad = model.tokenizer.pad_token_id or 0
    make = collate(pad)
    batches = [make([rows[i] for i in range(s * batch, (s + 1) * batch)]) for s in range(steps)]
    return entry, sets, batches


def clock() -> tuple[float, float]:
    """Return (wall, this process's CPU) seconds: on a shared machine the CPU seconds of a
    one-thread run are what the work cost, the wall seconds include waiting for a core."""
    return time.perf_counter(), time.process_time()


def per_step(stamps: list[tuple[float, float]]) -> dict[str, float]:
    """Mean wall and CPU seconds between consecutive stamps."""
    n = max(len(stamps) - 1, 1)
    return {
        "wall": (stamps[-1][0] - stamps[0][0]) / n,
        "cpu": (stamps[-1][1] - stamps[0][1]) / n,
    }


def naive(model: Any, batches: list, lr: float) -> dict[str, float]:
    """Seconds per step of the plain float32 GD loop (after the first step)."""
    hf = copy.deepcopy(model.hf).float().train()
    opt = torch.optim.AdamW(hf.parameters(), lr=lr)
    stamps = []
    for b in batches:
        f, r = b["forget"], b["retain"]
        loss = -hf(**f).loss + 1.5 * hf(**r).loss  # the batches carry input_ids, mask, labels
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        stamps.append(clock())
    return per_step(stamps)


def ours(model: Any, entry: Any, concepts: Path, steps: int, batch: int, **kw: Any) -> dict:
    """Seconds per step of ``conceptvec.unlearn`` (after the first), and the model."""
    stamps: list[tuple[float, float]] = []
    original = train.Progress.on_step_end

    def timed(self, *a, **k):
        stamps.append(clock())
        return original(self, *a, **k)

    train.Progress.on_step_end = timed
    try:
        r = unlearn(model, entry, "gd", concepts=concepts, steps=steps, batch_size=batch,
                    forget_qa="none", evaluate=False, progress=False, **kw)  # fmt: skip
    finally:
        train.Progress.on_step_end = original
    return {"step": per_step(stamps), "model": r.model, "record": r.record}


def floor(model: Any, batches: list) -> dict[str, float]:
    """Seconds per step of its bf16 GEMMs (forward and both backward products of every Linear)."""
    linears = [m for m in model.hf.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    cache: dict[tuple, tuple] = {}

    def operands(n: int, k: int, m: int) -> tuple:
        key = (n, k, m)
        if key not in cache:
            a = torch.randn(n, k).bfloat16()
            b = torch.randn(k, m).bfloat16()
            cache[key] = (a, b, torch.empty(n, m, dtype=torch.bfloat16))
        return cache[key]

    def gemms(b: dict) -> list[tuple]:
        out = []
        for part in b.values():
            tokens = part["input_ids"].numel()
            for i, o in shapes:
                out += [operands(tokens, i, o), operands(tokens, o, i), operands(i, tokens, o)]
        return out

    work = [gemms(b) for b in batches]
    stamps = []
    for w in [work[0], *work]:  # a warm-up pass over the first step's shapes
        for a, b, c in w:
            torch.matmul(a, b, out=c)
        stamps.append(clock())
    return per_step(stamps)


def logp(model: Any, hf: Any, examples: list) -> float:
    """Mean log p per label token over ``examples``, teacher-forced in float32."""
    pad = model.tokenizer.pad_token_id or 0
    total = count = 0.0
    with torch.no_grad():
        for s in range(0, len(examples), 8):
            b = collate(pad)([{"x": e} for e in examples[s : s + 8]])["x"]
            logits = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            lp = logits[:, :-1].float().log_softmax(-1)
            labels = b["labels"][:, 1:]
            mask = labels != -100
            picked = lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            total += float((picked * mask).sum())
            count += float(mask.sum())
    return total / count


def check(args: argparse.Namespace, model: Any) -> dict:
    entry, sets, _ = data(model, args.concepts, args.check_steps, args.batch, args.max_length)
    used = args.check_steps * args.batch
    held = {"forget": sets.forget[-16:], "retain": sets.retain[-16:]}  # least used in training
    out: dict[str, Any] = {"trained_rows": used, "held_out": {k: len(v) for k, v in held.items()}}
    out["base"] = {k: logp(model, model.hf, v) for k, v in held.items()}
    for p in ("fp32", "bf16-mixed"):
        t = time.perf_counter()
        r = ours(model, entry, args.concepts, args.check_steps, args.batch, precision=p,
                 lr=args.lr, threads=torch.get_num_threads())  # fmt: skip
        r["model"].eval()
        out[p] = {k: logp(model, r["model"], v) for k, v in held.items()}
        out[p]["seconds"] = time.perf_counter() - t
        print(p, out[p], flush=True)
    verdict = {}
    for k in held:
        change = abs(out["fp32"][k] - out["base"][k])
        diff = abs(out["bf16-mixed"][k] - out["fp32"][k])
        verdict[k] = {"diff": diff, "fp32_change": change, "ok": diff <= max(0.05 * change, 0.02)}
    out["verdict"] = verdict
    return out


def speed(args: argparse.Namespace, model: Any) -> list[dict]:
    entry, _, batches = data(model, args.concepts, args.steps, args.batch, args.max_length)
    tokens = [{k: int(v["input_ids"].numel()) for k, v in b.items()} for b in batches]
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        row: dict[str, Any] = {"threads": threads, "tokens_per_step": tokens}
        row["naive"] = naive(model, batches, args.lr)
        for p in ("bf16-mixed", "fp32"):
            r = ours(model, entry, args.concepts, args.steps, args.batch, precision=p,
                     lr=args.lr, threads=threads)  # fmt: skip
            row[f"ours_{p}"] = r["step"]
        row["floor"] = floor(model, batches)
        for c in ("wall", "cpu"):
            row[f"naive_over_ours_{c}"] = row["naive"][c] / row["ours_bf16-mixed"][c]
            row[f"ours_over_floor_{c}"] = row["ours_bf16-mixed"][c] / row["floor"][c]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concepts", type=Path, default=concepts_file("conceptvectors-dev"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--threads", default="1", help="Comma-separated torch thread counts.")
    ap.add_argument("--check-steps", type=int, default=0, help="Run the log p check instead.")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = cv.load(args.model, quiet=True)
    model.hf.float()  # noqa: B018  (build the float32 torch model before timing)
    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()} {platform.processor()}",
        "cpu": cpu_model(),
        "bf16_units": train._cpu_has_bf16(),
        "load_start": load_average(),
        "torch": torch.__version__,
        "concept": CONCEPT,
        "batch": args.batch,
    }
    if args.check_steps:
        torch.set_num_threads(int(args.threads.split(",")[0]))
        result["check"] = check(args, model)
    else:
        result["rows"] = speed(args, model)
    result["load_end"] = load_average()
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
