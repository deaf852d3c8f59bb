"""Top-k and bottom-k of one layer's scores: torch.topk against block selection variants.

    python benchmarks/bench_topk.py --device cuda --rows 14336 --vocab 128256 --dtype bfloat16

The scores are random (a selection's cost does not depend on the values). Every variant's
ids are checked against torch.topk.
"""

from __future__ import annotations

import argparse
import time

import torch

from conceptvec.atlas import topk


def timed(fn, device, repeat=5) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def fused(scores, k, block):
    """Block selection with one fused aminmax pass instead of amax and amin."""
    n, vocab = scores.shape
    body = scores.reshape(n, vocab // block, block)
    low, high = torch.aminmax(body, dim=-1)
    top = topk._pick(body, high, k, True)
    bottom = topk._pick(body, low, k, False)
    return top[0], top[1], bottom[0], bottom[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    v = torch.randn(args.rows, args.d_model, device=device, dtype=dtype)
    w = torch.randn(args.vocab, args.d_model, device=device, dtype=dtype)
    scores = v @ w.T
    ref = scores.topk(args.k)
    gemm = timed(lambda: v @ w.T, device)
    print(f"{args.rows} x {args.vocab} {args.dtype} on {device}; GEMM {1000 * gemm:.2f} ms")
    rows = {"torch.topk x2": lambda: (scores.topk(args.k), scores.topk(args.k, largest=False))}
    for block in (64, 128, 256, 512, 1024):
        rows[f"block amax+amin B={block}"] = lambda b=block: topk.top_bottom(scores, args.k, b)
    rows["block aminmax B=64"] = lambda: fused(scores, args.k, 64)
    for name, fn in rows.items():
        out = fn()
        values, ids = (out[0].values, out[0].indices) if len(out) == 2 else (out[0], out[1])
        exact = torch.equal(values, ref.values)  # ties may pick other ids, never other values
        same = float((ids == ref.indices).float().mean())
        t = timed(fn, device)
        print(
            f"  {name:<24} {1000 * t:8.2f} ms  ({t / gemm:5.2f} of the GEMM)  values equal "
            f"{exact}, ids agree {same:.4f} (the rest are ties)"
        )


if __name__ == "__main__":
    main()
