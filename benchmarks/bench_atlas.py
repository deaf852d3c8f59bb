"""Atlas speed: ``conceptvec map`` against the naive script and the GEMM floor, in one run.

    python benchmarks/bench_atlas.py --model smollm2-135m --device cpu
    python benchmarks/bench_atlas.py --model build/llama-8b --device cuda --matrices up

The numbers, all for the same neurons (every neuron of ``--matrices``, top and bottom k),
with ``--threads`` torch threads for every row:

- end-to-end: the real CLI, ``conceptvec map``, in a fresh process, timed from process start
  until the atlas is written (manifest, shards; no Parquet);
- projection phase: conceptvec's chunked GEMM + block top-k over matrices already in
  memory (what the pipeline overlaps reading and writing with);
- GEMM floor: the bare ``V @ W.T`` products alone, nothing kept;
- bf16 GEMM floor: the same products with bf16 ``V`` and ``W`` (what the fast pass costs);
- fp8 GEMM floor (CUDA only, reference): the same products in fp8 e4m3;
- two-pass (float32 atlases, CPU or CUDA): the exact two-pass selection
  (:mod:`conceptvec.atlas.twopass`): bf16 scores,
  candidates rescored in float32, a proof per neuron, float32 for the neurons it cannot
  prove. Its output is checked to be identical to the projection phase's for every matrix;
- naive: what a research script does, one neuron at a time through the LM head and a full
  sort, timed on ``--naive-sample`` neurons spread over the layers and scaled up linearly.
  Its top tokens are checked against conceptvec's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

import conceptvec
from conceptvec.atlas.build import project_top_bottom
from conceptvec.atlas.head import FoldedHead, Pending, layer_vectors, resolve_compute
from conceptvec.atlas.twopass import (
    TwoPassStats,
    choose_precision,
    exact_gemms,
    project_two_pass,
)
from conceptvec.errors import AtlasError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def end_to_end(model: str, device: str, matrices: str, k: int, precision: str) -> dict:
    """Run ``conceptvec map`` in a new process; return its wall time and its own report."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "conceptvec.cli", "map", model, "-o", f"{tmp}/atlas"]
        cmd += ["--device", device, "--matrices", matrices, "-k", str(k), "--export", "none"]
        cmd += ["--precision", precision]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + ["-q", "--json"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"conceptvec map failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout)
        manifest = json.loads(open(f"{tmp}/atlas/manifest.json").read())
        assert manifest["complete"]
    return {"wall_s": round(wall, 2), "report": report["seconds"]}


def fp8_floor(vectors, wb: torch.Tensor, device, repeat: int, out: dict) -> None:
    """Time the same products as an fp8 (e4m3, per-tensor scales) GEMM, for reference: on
    an H200 it runs at about twice the bf16 rate, but its accumulator keeps fewer bits than
    float32, so no rigorous bound (and so no exact two-pass) can be built on its scores."""
    try:
        f8 = torch.float8_e4m3fn
        one = torch.ones((), device=device)
        w8 = wb.to(f8)  # [vocab, d] row-major: its transpose is the column-major mat2
        v8 = [v.to(f8) for v in vectors]

        def run():
            for v in v8:
                torch._scaled_mm(v, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        run()
        out["fp8_floor_s"] = round(min(timed(run, device) for _ in range(repeat)), 4)
        print(f"fp8 GEMM floor (reference): {out['fp8_floor_s']} s", flush=True)
    except (RuntimeError, AttributeError, TypeError) as e:
        out["fp8_floor_error"] = f"{type(e).__name__}: {e}"[:300]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--matrices", default="up,gate,down")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--naive-sample", type=int, default=240)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for floor and projection")
    ap.add_argument("--json", type=str, default=None, help="also write the numbers here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the end-to-end processes

    out: dict = {"model": args.model, "matrices": args.matrices, "k": args.k}
    out["threads"] = torch.get_num_threads()
    out["load_average_before"] = os.getloadavg()
    if not args.skip_e2e:  # first, so its page cache state matches what a user sees
        for precision in ("float32", "two-pass"):
            e2e = end_to_end(args.model, args.device, args.matrices, args.k, precision)
            out[f"end_to_end_{precision}"] = e2e
            print(f"end-to-end conceptvec map --precision {precision}:", e2e, flush=True)

    model = conceptvec.load(args.model, quiet=True)
    device, dtype = resolve_compute(args.device, args.dtype)
    head = FoldedHead(model, device, dtype, True)
    items = [(layer, m) for layer in range(model.dims.n_layers) for m in args.matrices.split(",")]
    vectors = []
    for layer, m in items:
        v = layer_vectors(model, layer, m, head, True)
        vectors.append(v.result() if isinstance(v, Pending) else v)
    n_neurons = sum(len(v) for v in vectors)
    out.update(device=str(device), dtype=str(dtype), neurons=n_neurons)
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)

    # GEMM floor: the products alone, whole layers at once (the fastest way to run them).
    chunks = [w for _, w in head.chunks()]
    w = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # naive uses the whole head

    # Into one reused output buffer: a fresh [rows, vocab] block per product page-faults
    # (glibc returns large blocks to the system), which on CPU added 25% to the float32
    # floor and 140% to the bf16 one before 2026-12-02.
    widest = max(len(v) for v in vectors) * max(len(c) for c in chunks)
    out_buf = torch.empty(widest, dtype=head.dtype, device=device)

    def product(a, b):
        return torch.matmul(a, b.T, out=out_buf[: len(a) * len(b)].view(len(a), len(b)))

    def floor():
        with exact_gemms() if head.dtype == torch.float32 else contextlib.nullcontext():
            for v in vectors:
                for c in chunks:
                    product(v, c)

    if device.type == "cuda":
        floor()  # warm-up (cuBLAS heuristics)
    floor_s = min(timed(floor, device) for _ in range(args.repeat))
    out["floor_s"] = round(floor_s, 4)
    print(f"GEMM floor: {out['floor_s']} s", flush=True)

    results = []

    def ours():
        results.clear()
        results.extend(project_top_bottom(v, head, args.k) for v in vectors)

    if device.type == "cuda":
        ours()
    projection_s = min(timed(ours, device) for _ in range(args.repeat))
    out["projection_s"] = round(projection_s, 4)
    out["projection_over_floor"] = round(projection_s / floor_s, 3)
    print(f"projection phase: {out['projection_s']} s = {out['projection_over_floor']}x floor")

    def torch_topk():
        for v in vectors:
            for c in chunks:
                s = v @ c.T
                s.topk(args.k)
                s.topk(args.k, largest=False)

    out["gemm_plus_torch_topk_s"] = round(timed(torch_topk, device), 3)

    fast = None
    if head.dtype == torch.float32:
        try:
            fast = choose_precision("two-pass", head, args.k)
        except AtlasError as e:  # e.g. a GPU whose float32 bits change with the GEMM's shape
            out["two_pass_refused"] = str(e)
            print(e, flush=True)
    if fast is not None:
        out["two_pass_group"] = fast.group
        out["two_pass_selection"] = "compiled (numba)" if fast.compiled else "torch ops"
        wb = fast.wb
        out_buf = out_buf.view(torch.bfloat16)  # the float32 buffer holds twice as many

        def bf16_floor():
            with exact_gemms():  # as the two-pass path runs it: float32 reductions
                for v in vectors:
                    product(v.to(torch.bfloat16), wb)

        if device.type == "cuda":
            bf16_floor()
        out["bf16_floor_s"] = round(min(timed(bf16_floor, device) for _ in range(args.repeat)), 4)
        print(f"bf16 GEMM floor: {out['bf16_floor_s']} s", flush=True)
        if device.type == "cuda":
            fp8_floor(vectors, wb, device, args.repeat, out)
        stats = TwoPassStats()
        fast_results: list = []

        def two_pass():
            fast_results.clear()
            stats.__init__()
            for v in vectors:
                result, done = project_two_pass(v, fast, args.k, project_top_bottom)
                fast_results.append(result)
                stats.add(done)

        if device.type == "cuda":
            two_pass()
        two_pass_s = min(timed(two_pass, device) for _ in range(args.repeat))
        same = all(torch.equal(a[key], b[key]) for a, b in zip(results, fast_results) for key in a)
        out.update(
            two_pass_s=round(two_pass_s, 4),
            two_pass_over_floor=round(two_pass_s / floor_s, 3),
            two_pass_over_bf16_floor=round(two_pass_s / out["bf16_floor_s"], 3),
            two_pass_identical_to_projection=same,
            two_pass_stats=stats.__dict__.copy(),
        )
        print(
            f"two-pass: {out['two_pass_s']} s = {out['two_pass_over_floor']}x floor; "
            f"identical: {same}; {stats}",
            flush=True,
        )

    # naive: one neuron at a time, full sort, on a sample spread over all matrices
    per = max(1, args.naive_sample // len(vectors))
    sample = [
        (i, j)
        for i in range(len(vectors))
        for j in range(0, len(vectors[i]), len(vectors[i]) // per)
    ][: args.naive_sample]
    agree = 0

    def naive():
        nonlocal agree
        for i, j in sample:
            logits = w @ vectors[i][j]
            order = torch.sort(logits.float(), descending=True).indices
            top, bottom = order[: args.k], order.flip(0)[: args.k]
            agree += int(top[0] == results[i]["top_ids"][j, 0]) + int(
                bottom[0] == results[i]["bottom_ids"][j, 0]
            )

    t = timed(naive, device)
    out["naive_per_neuron_ms"] = round(1000 * t / len(sample), 3)
    out["naive_extrapolated_s"] = round(t / len(sample) * n_neurons, 1)
    out["naive_top1_agreement"] = agree / (2 * len(sample))
    out["speedup_vs_naive_projection"] = round(t / len(sample) * n_neurons / projection_s, 1)
    if "end_to_end_float32" in out:
        e2e = out["end_to_end_float32"]["wall_s"]
        out["speedup_vs_naive_end_to_end"] = round(out["naive_extrapolated_s"] / e2e, 1)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
