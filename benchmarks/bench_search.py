"""Interactive search: ``conceptvec search MODEL WORD`` from the shell and in process.

Weight search needs, besides the searched token's rows, things that never change while the
weights do not: every token's text (the tokenizer, and transformers to load it), the
dequantized head of a GGUF, the head's mean and covariance, and each neuron's spread.
conceptvec keeps them in ``$CONCEPTVEC_CACHE/derived``. This benchmark runs, in one go and
interleaved (one of each per round, so a changing machine load hits all alike):

- baseline (with ``--baseline DIR``, a checkout of older conceptvec code put first on
  ``PYTHONPATH``): today's code path;
- cold: this code in a fresh process with no derived cache (the GGUF's converted config and
  tokenizer are there, as after any earlier use);
- warm: this code in a fresh process with the derived cache (filled by one search first).

For each it times, as wall (and CPU) seconds of a fresh ``python -m conceptvec.cli`` process:
``search MODEL WORD``, ``neuron MODEL NEURON`` and ``--help``; and in one process:
``import conceptvec`` + ``load`` + the first ``search_weights(model, WORD)`` (the baseline
imports transformers in ``load``, this code only when it must build the token texts), and
the median of the later calls on the same model.
The floor is a fresh ``python -c "import torch"``, which every route pays.
The hits of every route must agree: cold and warm identically (every field), the baseline
on neurons, tokens and ranks (its scores may differ in the last float32 bits).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_search.py [--baseline DIR] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchio import timed_run

IN_PROCESS = """
import json, sys, time
t = time.perf_counter()
import conceptvec
model = conceptvec.load(sys.argv[1], quiet=True)
loaded = time.perf_counter() - t
calls = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    hits = conceptvec.search_weights(model, sys.argv[2])
    calls.append(time.perf_counter() - t)
print(json.dumps({"load": loaded, "calls": calls, "hits": [h.to_dict() for h in hits]}))
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wall(args: list[str], env: dict) -> tuple[float, float, str]:
    """Return (wall seconds, CPU seconds, stdout) of one fresh process running ``args``.

    CPU seconds (user + system) depend less on the machine's load than wall seconds do.
    It runs in the cache folder, so that ``PYTHONPATH`` alone says which code is imported.
    """
    seconds, cpu, done = timed_run(
        args, env=env, capture_output=True, text=True, cwd=env["CONCEPTVEC_CACHE"]
    )
    if done.returncode:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-2000:]}")
    return seconds, cpu, done.stdout


def routes(baseline: Path | None, user_cache: Path, threads: int) -> dict[str, dict]:
    """Return route name -> environment (and the empty cache folders to reset each round)."""
    base = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    here = str(Path(__file__).resolve().parent.parent)
    out = {}
    if baseline is not None:
        # older code with the user's cache: its GGUF conversions, nothing it did not use
        out["baseline"] = dict(base, PYTHONPATH=str(baseline), CONCEPTVEC_CACHE=str(user_cache))
    for name in ("cold", "warm"):
        root = Path(tempfile.mkdtemp(prefix=f"cv-bench-{name}-"))
        if (user_cache / "gguf").is_dir():  # the GGUF conversions, as after any earlier use
            (root / "gguf").symlink_to(user_cache / "gguf")
        out[name] = dict(base, PYTHONPATH=here, CONCEPTVEC_CACHE=str(root))
    return out


def same_hits(a: list[dict], b: list[dict]) -> bool:
    """True when two hit lists name the same neurons, tokens and ranks, in the same order."""
    fields = ("neuron", "matrix", "token", "token_id", "vocab_rank", "side", "matched")
    return [[h[f] for f in fields] for h in a] == [[h[f] for f in fields] for h in b]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--word", default="dog")
    parser.add_argument("--neuron", default="L12.345")
    parser.add_argument("--baseline", type=Path, help="a checkout of older conceptvec code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="searches per in-process run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    from conceptvec.models.disk_cache import cache_root

    envs = routes(args.baseline, cache_root(), args.threads)
    cli = [sys.executable, "-m", "conceptvec.cli"]
    commands = {
        "search": cli + ["search", args.model, args.word],
        "neuron": cli + ["neuron", args.model, args.neuron],
        "help": cli + ["--help"],
    }
    floor = [sys.executable, "-c", "import torch"]  # what any route must at least pay
    times: dict[str, dict[str, list[float]]] = {r: {} for r in envs}
    hits: dict[str, list] = {}
    loads = [load_average()]
    try:
        wall(commands["search"], envs["warm"])  # fill the warm route's derived cache
        for _ in range(args.rounds):
            for route, env in envs.items():
                derived = Path(env["CONCEPTVEC_CACHE"]) / "derived"
                for name, command in commands.items():
                    if route == "cold":  # no derived cache: what a first use computes
                        shutil.rmtree(derived, ignore_errors=True)
                    seconds, cpu, _ = wall(command, env)
                    times[route].setdefault(name, []).append(seconds)
                    times[route].setdefault(name + " cpu", []).append(cpu)
                if route == "cold":
                    shutil.rmtree(derived, ignore_errors=True)
                script = [sys.executable, "-c", IN_PROCESS, args.model, args.word, str(args.calls)]
                _, _, out = wall(script, env)
                r = json.loads(out)
                times[route].setdefault("load + first call", []).append(r["load"] + r["calls"][0])
                times[route].setdefault("later calls", []).append(statistics.median(r["calls"][1:]))
                hits.setdefault(route, r["hits"])
                if hits[route] != r["hits"]:
                    raise AssertionError(f"{route}: the hits changed between rounds")
            seconds, cpu, _ = wall(floor, envs["warm"])
            times["warm"].setdefault("floor", []).append(seconds)
            times["warm"].setdefault("floor cpu", []).append(cpu)
            loads.append(load_average())
    finally:
        for route, env in envs.items():
            if route != "baseline":
                shutil.rmtree(env["CONCEPTVEC_CACHE"], ignore_errors=True)
    assert hits["cold"] == hits["warm"], "the cached search differs from the uncached one"
    agree = "cold == warm (every field)"
    if "baseline" in hits:
        assert same_hits(hits["baseline"], hits["warm"]), "the baseline found other neurons"
        agree += "; baseline: same neurons, tokens and ranks"
    rows = ["search", "neuron", "help", "load + first call", "later calls"]
    medians = {r: {k: statistics.median(v) for k, v in t.items()} for r, t in times.items()}
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={args.threads}, "
        f"python {platform.python_version()}; median of {args.rounds} rounds; "
        f"load average (1/5/15 min) per round: {' | '.join(loads)}"
    )
    print(f"# hits: {agree}")
    print("| wall seconds (CPU seconds) | " + " | ".join(envs) + " |")
    print("|---" * (len(envs) + 1) + "|")
    for row in rows:
        cells = []
        for r in envs:
            cpu = medians[r].get(row + " cpu")
            cells.append(f"{medians[r][row]:.2f}" + (f" ({cpu:.2f})" if cpu is not None else ""))
        print(f"| {row} | " + " | ".join(cells) + " |")
    w = medians["warm"]
    print(f"\nfloor, a fresh `python -c 'import torch'`: {w['floor']:.2f} s ({w['floor cpu']:.2f})")
    if args.out:
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "load": loads}
        report.update(times=times, medians=medians, hits_agree=agree)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
