"""Seconds per step of the relearn attacks' training (``conceptvec.evaluate.behaviour.relearned``)
in float32 and in bf16-mixed, beside the bf16 GEMM floor of the same step, in one process.

    python benchmarks/bench_relearn.py --out benchmarks/results/relearn-smollm2-cpu.json

The texts are the unrelated ConceptVectors articles ``relearn`` trains on for "Ancient
Rome" (batch 4 x 256 tokens, the attack's defaults). A route's seconds per step are
``(time of 1 + n steps - time of 1 step) / n``, so the model copy and the first step's
one-time costs are left out. ``fp32`` is the plain loop a researcher writes (``model(...,
labels=...).loss``, AdamW); ``bf16-mixed`` adds ``torch.autocast`` to bf16 around the
forward (float32 weights and AdamW state). The floor is every ``nn.Linear``'s forward and
two backward GEMMs in bf16 at the step's shapes (``bench_training.floor``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_activation_atlas import cpu_model, load_average
from bench_training import floor
from benchio import command, emit

import conceptvec as cv
from conceptvec.concepts import read_concepts
from conceptvec.evaluate.behaviour import relearned


def timed(hf, tok, texts, steps: int, precision: str) -> float:
    t = time.perf_counter()
    relearned(hf, tok, texts, steps=steps, lr=2e-5, precision=precision)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = cv.load(args.model, quiet=True)
    hf, tok = model.hf.float(), model.tokenizer
    entries = read_concepts("conceptvectors-dev")
    texts = [e.wikipedia_content for e in entries if e.concept != "Ancient Rome"]
    out: dict = {
        "command": command(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": load_average(),
        "batch": "4 x 256 tokens",
    }
    for p in ("fp32", "bf16-mixed", "fp32", "bf16-mixed"):  # alternated, twice each
        one = timed(hf, tok, texts, 1, p)
        many = timed(hf, tok, texts, 1 + args.steps, p)
        out.setdefault(p, []).append((many - one) / args.steps)
    shapes = {"x": {"input_ids": torch.zeros((4, 256), dtype=torch.long)}}
    out["floor"] = floor(model, [shapes, shapes, shapes])["wall"]
    for p in ("fp32", "bf16-mixed"):
        out[f"{p}_best"] = min(out[p])
    out["fp32_over_bf16"] = out["fp32_best"] / out["bf16-mixed_best"]
    out["bf16_over_floor"] = out["bf16-mixed_best"] / out["floor"]
    out["load_end"] = load_average()
    emit(out, args.out)


if __name__ == "__main__":
    main()
