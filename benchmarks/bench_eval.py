"""Benchmark the weights-only intrinsic evaluation: every down column of two checkpoints.

One run measures, on a base and an unlearned checkpoint of the same model:

- **naive**: the per-vector loop a researcher would write: for each down column, decode the
  base and the unlearned vector through the LM head (``W_U @ v``), take each top-k, intersect,
  and compute cosine and L2 (float32). Timed on ``--naive-layers`` layers and extrapolated to
  all (marked as such);
- **floor**: one float32 GEMM of every down column of *one* checkpoint with the head plus its
  top-k: the least any exact Jaccard@k of all columns can cost (the straightforward batched
  route decodes both checkpoints: twice this);
- **conceptvec**: ``compare_weights(..., all_jaccard=True)``: streaming both checkpoints from
  disk, float64 cosine / L2 / relative change and percentiles for every MLP vector (up,
  gate, down), the change map, and Jaccard@k of every down column on both sides (top and
  bottom tokens, from the same GEMMs), decoding the unlearned column only where its top-k
  cannot be certified unchanged. (The naive loop does the top side only.)

The Jaccard values of the naive loop and of conceptvec are compared on the naive layers.

    python benchmarks/bench_eval.py --base smollm2-135m --unlearned runs/rome-ga \\
        --out benchmarks/results/eval-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import conceptvec as cv
from conceptvec.evaluate import compare_weights


def naive(base, unl, layers: list[int], k: int) -> tuple[float, dict[int, list[float]]]:
    """The per-vector loop on ``layers``: seconds and Jaccard per column."""
    w_u = base.unembedding().float()
    t0 = time.perf_counter()
    out = {}
    for layer in layers:
        b, u = base.neurons(layer, "down").float(), unl.neurons(layer, "down").float()
        jac = []
        for i in range(b.shape[0]):
            top_b = set((w_u @ b[i]).topk(k).indices.tolist())
            top_u = set((w_u @ u[i]).topk(k).indices.tolist())
            jac.append(len(top_b & top_u) / len(top_b | top_u))
            torch.nn.functional.cosine_similarity(b[i], u[i], dim=0)
            (u[i] - b[i]).norm()
        out[layer] = jac
    return time.perf_counter() - t0, out


def floor(base, k: int, device: str) -> float:
    """One checkpoint's down columns through the head (float32 GEMM + top-k), weights in memory."""
    w_u = base.unembedding().to(device).float().contiguous()
    cols = [base.neurons(layer, "down").to(device).float() for layer in range(base.dims.n_layers)]
    rows = 512 if device == "cpu" else 4096
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for c in cols:
        for s in range(0, c.shape[0], rows):
            (c[s : s + rows] @ w_u.T).topk(k, dim=-1)
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--unlearned", required=True)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--naive-layers", type=int, default=1, help="Layers the naive loop runs on.")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base, unl = cv.load(args.base), cv.load(args.unlearned)
    n_layers, d_mlp = base.dims.n_layers, base.dims.d_mlp
    layers = list(range(n_layers - args.naive_layers, n_layers))

    t0 = time.perf_counter()
    ours = compare_weights(
        base, unl, [], k=args.k, all_jaccard=True, top_changed=0, device=args.device
    )
    t_ours = time.perf_counter() - t0
    t_floor = floor(base, args.k, args.device)
    t_naive, naive_jac = naive(base, unl, layers, args.k) if args.naive_layers else (0.0, {})
    t_naive_all = t_naive * n_layers / len(layers) if layers else None
    same = (
        all(ours.jaccard_all["top"][layer].tolist() == jac for layer, jac in naive_jac.items())
        if naive_jac
        else None
    )
    j = ours.jaccard_all["top"]
    result = {
        "base": args.base,
        "unlearned": args.unlearned,
        "columns": n_layers * d_mlp,
        "k": args.k,
        "threads": args.threads,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seconds": {
            "naive_per_vector_extrapolated": t_naive_all,
            "naive_measured": t_naive,
            "naive_layers": len(layers),
            "floor_one_decoding": t_floor,
            "floor_two_decodings": 2 * t_floor,
            "conceptvec": t_ours,
        },
        "recomputed_columns": ours.jaccard_recomputed,
        "jaccard_identical_to_naive_on_its_layers": same,
        "jaccard": {"mean": float(j.mean()), "min": float(j.min()), "below_1": int((j < 1).sum())},
        "rel_change_down": ours.distribution["down"],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
