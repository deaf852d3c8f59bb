"""Benchmark the activation atlas's corpus pass: our hooks vs. a bare forward pass vs. a naive
per-neuron Python top-k, over the same tokens, in one run.

    python benchmarks/bench_activation_atlas.py --tokens 4096 --json benchmarks/results/x.json

- floor: the same padded batches through the model with no hook (``forward_with(..., {})``);
- conceptvec: ``corpus_pass``'s inner loop (``_Pass.chunk``): read-only hooks on every layer,
  each folding its batch into a :class:`LayerStats` (top/bottom-k exemplars with context
  windows, density, mean, std, reservoir sample);
- naive: what a hand-written script does per neuron: the layer's activations as Python
  lists, ``heapq.nlargest``/``nsmallest`` for the exemplars and Python sums for the
  statistics. It is timed on ``--naive-neurons`` neurons of one layer over the first
  ``--naive-tokens`` tokens and extrapolated linearly to every neuron and token (plus the
  floor, since it needs the forward pass too; keeping every activation is not counted).

Floor and conceptvec run alternately ``--repeat`` times; the best of each is reported, and
``hook_ratio`` divides each conceptvec pass by the same pass less the time spent inside the
statistics (timed around every ``LayerStats.update``), the largest over the runs: on a
shared machine whose load changes between runs, it is the steadier number. Tokens
are the packaged ConceptVectors articles (tokenized), or random ids for a model without a
tokenizer (the random checkpoints of ``make_checkpoint.py``). With ``--device cuda`` the JSON
also projects the cost of Transluce's corpus (1M sequences of 95 tokens).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRANSLUCE_TOKENS = 1_000_000 * 95
TRANSLUCE_A100_HOURS = 64 * 2  # "about 64 hours on 2 A100s"


def corpus_ids(model, n_tokens: int, vocab: int) -> list[list[int]]:
    """Return token id lists of about ``n_tokens`` tokens in all."""
    tok = model.tokenizer
    if tok is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(vocab, (n_tokens,), generator=g).tolist()
        return [ids[i : i + 1000] for i in range(0, n_tokens, 1000)]
    data = json.loads((ROOT / "conceptvec/data/conceptvectors_dev_sample.json").read_text())
    out, total = [], 0
    for record in data:
        ids = tok(record["wikipedia_content"], add_special_tokens=False)["input_ids"]
        ids = ids[: n_tokens - total]
        out.append(ids)
        total += len(ids)
        if total >= n_tokens:
            break
    return out


def split_tokens(texts: list[list[int]], n: int) -> tuple[list[list[int]], list[list[int]]]:
    """Return the first ``n`` tokens and the rest, as lists of token id lists."""
    first, rest, total = [], [], 0
    for row in texts:
        take = row[: max(0, n - total)]
        total += len(take)
        if take:
            first.append(take)
        if len(row) > len(take):
            rest.append(row[len(take) :])
    return first, rest


def naive_per_neuron(acts: torch.Tensor, neurons: int, k: int, threshold: float) -> float:
    """Return the seconds per neuron of a Python top-k, bottom-k and statistics."""
    t0 = time.perf_counter()
    for j in range(neurons):
        col = acts[:, j].tolist()
        idx = range(len(col))
        heapq.nlargest(k, idx, key=col.__getitem__)
        heapq.nsmallest(k, idx, key=col.__getitem__)
        n = len(col)
        mean = sum(col) / n
        _ = (sum((v - mean) ** 2 for v in col) / n) ** 0.5
        _ = sum(v > threshold for v in col), sum(v < -threshold for v in col)
    return (time.perf_counter() - t0) / neurons


def cpu_model() -> str:
    """Return the CPU's model name (as ``lscpu`` shows it), or the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def timed(fn, total: list[float]):
    """Return ``fn`` adding the seconds of each call to ``total[0]``."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - t0

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="torch dtype of the model (default: as loaded)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument(
        "--warm-tokens",
        type=int,
        default=0,
        help="tokens read (untimed) before the timed pass, so the exemplar lists are as full as "
        "in the middle of a long corpus; 0 times a fresh start (every list filled at once)",
    )
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--naive-neurons", type=int, default=64)
    ap.add_argument("--naive-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="", help="recorded as is (e.g. the machine's load)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import conceptvec
    from conceptvec.atlas.corpus_pass import _Pass
    from conceptvec.atlas.exemplars import LayerStats, StatsConfig
    from conceptvec.interventions.apply import forward_with
    from conceptvec.models.backends import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = conceptvec.load(args.model, dtype=dtype, quiet=True)
    model.hf.to(args.device)
    target = resolve(model)
    d = target.model.dims
    every = corpus_ids(model, args.warm_tokens + args.tokens, d.vocab)
    warm_ids, ids = split_tokens(every, args.warm_tokens)
    prefix = target.prefix
    cfg = StatsConfig(k=args.k)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def fresh() -> _Pass:
        stats = {layer: LayerStats(d.d_mlp, cfg, dev) for layer in range(d.n_layers)}
        return _Pass(target, stats, prefix, args.seq_len, args.batch_tokens)

    def floor(texts: list[list[int]] = ids) -> float:
        p = fresh()
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for _, ids_t, mask_t in p.batches(texts, 0, 0):
                forward_with(target, ids_t, mask_t, {})
        sync()
        return time.perf_counter() - t0

    warm_state = None
    if args.warm_tokens:  # lists filled by earlier text, as in the middle of a long corpus
        p = fresh()
        p.chunk(warm_ids, 0, 0)
        warm_state = {layer: s.state() for layer, s in p.stats.items()}

    def ours() -> tuple[float, int, int, float]:
        p = fresh()
        if warm_state is not None:
            for layer, s in p.stats.items():
                s.load(warm_state[layer])
        hooks = [0.0]  # the seconds spent inside the statistics (the hooks' own work)
        for s in p.stats.values():
            s.update = timed(s.update, hooks)  # type: ignore[method-assign]
        sync()
        t0 = time.perf_counter()
        n = p.chunk(ids, 0, 0)
        sync()
        state = sum(t.nbytes for s in p.stats.values() for t in s.t.values())
        return time.perf_counter() - t0, n, state, hooks[0]

    load_start = load_average()
    floor([ids[0][: args.seq_len]])  # warm-up (allocator, kernels)
    floors, mine, hook_s = [], [], []
    n_tokens = state_bytes = 0
    for _ in range(args.repeat):
        floors.append(floor())
        t, n_tokens, state_bytes, h = ours()
        mine.append(t)
        hook_s.append(h)

    # naive: one layer's activations for every token, then Python per neuron
    layer = d.n_layers - 1
    kept: list[torch.Tensor] = []
    p = fresh()

    def keep(x: torch.Tensor) -> torch.Tensor:
        kept.append(x[mask].float().cpu())
        return x

    sample, total = [], 0  # the naive loop is linear in tokens: time it on the first ones
    for row in ids:
        sample.append(row[: args.naive_tokens - total])
        total += len(sample[-1])
        if total >= args.naive_tokens:
            break
    with torch.no_grad():
        for batch, ids_t, mask_t in p.batches(sample, 0, 0):
            mask = batch.mask.to(dev)
            forward_with(target, ids_t, mask_t, {layer: keep})
    acts = torch.cat(kept)
    per_neuron = naive_per_neuron(acts, min(args.naive_neurons, d.d_mlp), args.k, cfg.threshold)
    per_neuron *= n_tokens / len(acts)  # scaled to the whole corpus
    neurons = d.n_layers * d.d_mlp
    best_floor, best_ours = min(floors), min(mine)
    naive_total = best_floor + per_neuron * neurons
    result = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "load_average": {"start": load_start, "end": load_average()},
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note,
        "tokens": n_tokens,
        "warm_tokens": args.warm_tokens,
        "layers": d.n_layers,
        "neurons": neurons,
        "k": args.k,
        "seq_len": args.seq_len,
        "floor_s": floors,
        "ours_s": mine,
        "ratio": best_ours / best_floor,
        "hooks_s": hook_s,
        # within each of our passes: (its time) / (its time less the hooks' own time), the
        # overhead measured inside one run, so that load changing between runs cancels; the
        # largest of the runs
        "hook_ratio": max(t / (t - h) for t, h in zip(mine, hook_s)),
        "naive_s_per_neuron": per_neuron,
        "naive_timed_on": {"neurons": min(args.naive_neurons, d.d_mlp), "tokens": len(acts)},
        "naive_s_estimated": naive_total,
        "naive_ratio": naive_total / best_floor,
        "tokens_per_s": n_tokens / best_ours,
        "state_mb": state_bytes / 2**20,
    }
    if dev.type == "cuda":
        hours = TRANSLUCE_TOKENS / result["tokens_per_s"] / 3600
        result["transluce_corpus_gpu_hours"] = hours
        result["transluce_a100_hours"] = TRANSLUCE_A100_HOURS
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
