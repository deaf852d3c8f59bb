"""Meta-evaluation (issue 20, item 6): which measure predicts that unlearned knowledge comes back?

    # the full grid (6 methods x 2 strengths x 3 validated vectors + 3 controls = 39 checkpoints)
    OMP_NUM_THREADS=2 python benchmarks/meta_eval.py --work runs/meta
    # or in two processes of one thread each (faster on 2 cores), then the summary:
    C=benchmarks/results/meta_eval_cells  # committed: a later session resumes from it
    OMP_NUM_THREADS=1 python benchmarks/meta_eval.py --work runs/meta --cells $C --shard 0/2 &
    OMP_NUM_THREADS=1 python benchmarks/meta_eval.py --work runs/meta --cells $C --shard 1/2; wait
    python benchmarks/meta_eval.py --work runs/meta --cells $C
    # what CI runs: 2 checkpoints, 2 steps, 3 questions
    python benchmarks/meta_eval.py --subset --work runs/meta-subset --out runs/meta-subset/meta.json
    # rewrite docs/meta-evaluation.md from docs/data/meta_eval_smollm2.json (--check: compare)
    python benchmarks/meta_eval.py --doc

Each checkpoint is made with ``conceptvec.unlearn`` on SmolLM2-135M-Instruct, measured with
``conceptvec.evaluate.intrinsic`` (weights, trace, QA, and every attack registered: the
``meta-heldout`` ground truth of meta_attack.py, ``quant4``, and ``patch`` / a ``depth_score``
metric when the library has them) and written to ``WORK/cells/KEY.json`` through a temp file
and a rename; a cell whose file exists with the same settings hash is skipped, so an
interrupted run resumes. The checkpoint folder is removed after its cell is written
(``--keep`` keeps it). ``--only N`` runs the first N cells of the grid (a partial grid).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import meta_attack  # noqa: E402  (registers meta-control and meta-heldout)
from docgen import write_or_check  # noqa: E402
from meta_stats import HIDDEN, analyse, doc_blocks  # noqa: E402

from conceptvec.unlearning.train import resolve_precision  # noqa: E402

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "meta-evaluation.md"
OUT = ROOT / "docs" / "data" / "meta_eval_smollm2.json"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MODEL, CONCEPTS = "smollm2-135m", "smollm2-dev"
STRENGTHS: dict[str, list[dict[str, Any]]] = {
    "edit": [{"mode": "zero"}, {"mode": "reverse"}],
    "ga": [{"lr": 1e-5}, {"lr": 3e-5}],
    "gd": [{"lr": 1e-5}, {"lr": 3e-5}],
    "npo": [{"lr": 3e-5}, {"lr": 6e-5}],
    "rmu": [{"lr": 1e-3}, {"lr": 5e-3}],
    "needle": [{"lr": 3e-3}, {"lr": 1e-2}],
}
CONTROL = {"lr": 3e-5}
# the depth profile on every other layer of SmolLM2's 30 (1, 3, ..., 29: the vectors' layer
# and the last included) halves the patch attack's forward passes; the UDS-style score
# averages over these 15 layers
PRECISION = resolve_precision("auto", "cpu")
"""The held-out relearning's precision on this machine (bf16-mixed where the CPU has bf16
matrix units); in the settings hash, so a machine that resolves otherwise remeasures."""
FULL = {"steps": 25, "questions": None, "heldout_steps": 10, "max_new_tokens": 32,
        "patch_layers": list(range(1, 30, 2)), "heldout_precision": PRECISION}  # fmt: skip
SUBSET = {"steps": 2, "questions": 3, "heldout_steps": 2, "max_new_tokens": 8,
          "patch_layers": [0, 10, 20, 29], "heldout_precision": PRECISION}  # fmt: skip


def validated() -> list[tuple[str, str]]:
    """(concept, neuron) of every vector the packaged SmolLM2 file validated (verdict concept)."""
    from conceptvec.data import resolve_concepts

    recs = json.loads(resolve_concepts(CONCEPTS).read_text(encoding="utf-8"))
    out = []
    for r in recs:
        v = (r.get("conceptvec") or {}).get("vector") or {}
        if v.get("verdict") == "concept":
            out.append((r["Concept"], v["neuron"]))
    return out


def grid(subset: bool) -> list[dict[str, Any]]:
    """Every cell of the grid: method, strength, concept, vector."""
    concepts = validated()
    if subset:
        rome = next(c for c in concepts if c[0] == "Ancient Rome")
        return [_cell("edit", 0, *rome), _cell("ga", 1, *rome)]
    cells = [
        _cell(m, i, c, n) for c, n in concepts for m in STRENGTHS for i in range(len(STRENGTHS[m]))
    ]
    return cells + [_cell("meta-control", 0, c, n) for c, n in concepts]


def _cell(method: str, i: int, concept: str, neuron: str) -> dict[str, Any]:
    params = CONTROL if method == "meta-control" else STRENGTHS[method][i]
    slug = "".join(ch if ch.isalnum() else "-" for ch in concept.lower())
    return {"key": f"{slug}-{method}-{i}", "method": method, "strength": i, "params": params,
            "concept": concept, "neuron": neuron}  # fmt: skip


def _extras() -> tuple[list[str], list[str]]:
    from conceptvec.evaluate import ATTACKS

    attacks = ["meta-heldout", "quant4"] + (["patch"] if "patch" in ATTACKS else [])
    metrics: list[str] = []  # the depth metric is in every report (when the library has it)
    return attacks, metrics


def settings_of(cell: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides a cell's result (hashed to know a stale cell)."""
    attacks, metrics = _extras()
    return dict(cell, model=MODEL, concepts=CONCEPTS, run=run, attacks=attacks, metrics=metrics,
                batch_size=2, max_length=256, seed=0)  # fmt: skip


def run_cell(cell: dict[str, Any], run: dict[str, Any], work: Path, keep: bool) -> dict[str, Any]:
    """Make, measure and grade one checkpoint; return its record."""
    import conceptvec as cv

    s = settings_of(cell, run)
    ck = work / "ckpt" / cell["key"]
    ck.parent.mkdir(parents=True, exist_ok=True)
    params = dict(cell["params"])
    lr = params.pop("lr", None)
    steps = run["steps"]  # edit trains nothing and ignores it
    t0 = time.perf_counter()
    res = cv.unlearn(
        MODEL, cell["concept"], cell["method"], concepts=CONCEPTS, steps=steps, lr=lr,
        neuron=cell["neuron"] if cell["method"] in ("edit", "needle") else None,
        batch_size=s["batch_size"], max_length=s["max_length"], seed=s["seed"], evaluate=False,
        out=ck, overwrite=True, progress=False, **params,
    )  # fmt: skip
    del res
    t1 = time.perf_counter()
    meta_attack.OPTIONS.update(
        steps=run["heldout_steps"], lr=3e-5, seed=0, precision=run["heldout_precision"]
    )
    meta_attack.SIDE.clear()
    report = cv.evaluate.intrinsic(
        MODEL, [str(ck)], CONCEPTS, names=[cell["concept"]], attacks=s["attacks"],
        metrics=s["metrics"], max_questions=run["questions"], controls=5,
        options={"patch": {"layers": run["patch_layers"]}},
        max_new_tokens=run["max_new_tokens"],
    ).to_dict()  # fmt: skip
    t2 = time.perf_counter()
    if not keep:
        shutil.rmtree(ck, ignore_errors=True)
    c = report["runs"][0]["concepts"][0]
    side = meta_attack.SIDE[cell["concept"]]
    rec = {r["attack"]: r for r in c["recovery"]}
    v, beh = c["vector"], c["behaviour"]
    depth = (c.get("metrics") or {}).get("depth") or {}
    recovered = rec["meta-heldout"]["recovered"]
    return dict(
        cell, settings_hash=_hash(s), settings=s,
        seconds={"unlearn": t1 - t0, "evaluate": t2 - t1}, eval_timings=report.get("timings"),
        load=round(os.getloadavg()[1], 1),  # the 5-minute load average as the cell ended
        measures={
            # the depth metric's copies make the edge cases null (zero vector: no cosine;
            # unchanged vector: no percentile)
            "cosine": depth.get("cosine", v["cosine"]), "jaccard": v["jaccard"],
            "change_pct": depth.get("change_pct_layer", v["change_pct_layer"]),
            "label": c["label"],
            "trace_label": None if c["label"] == "not measured" else int(c["label"] in HIDDEN),
            "patch_recovery": (rec.get("patch") or {}).get("recovered"),
            "depth_score": depth.get("score"),
            "forget_drop": beh["forget"]["logprob_drop"],
            "rouge_l": beh["forget"]["unlearned"]["rouge_l"],
            "uds": uds_style((rec.get("patch") or {}).get("profile")),
            "forget_drop_b": side["base_logprob_b"] - side["unlearned_logprob_b"],
            "quant4_recovered": (rec.get("quant4") or {}).get("recovered"),
        },
        truth={"recovered": recovered, "comes_back": None if recovered is None else recovered >= 0.5,
               "base_control_gain": side["base_control_gain_b"], "halves": [side["half_a"], side["half_b"]]},
        robustness={k: side[k] for k in ("quant4", "relearn")},
    )  # fmt: skip


def uds_style(profile: dict[str, Any] | None) -> float | None:
    """A UDS-style score from the patch attack's depth profile: 1 − the mean over the profiled
    layers of the share of the lost forget log p that patching the base's residual stream
    after that layer brings back (clipped to 0..1). 0: every layer's residual still carries
    the answer path (shallow); 1: none does. None when not measured or nothing was lost."""
    shares = [x for x in (profile or {}).get("resid", []) if x is not None]
    if not shares:
        return None
    return 1.0 - sum(min(1.0, max(0.0, x)) for x in shares) / len(shares)


def _shard(text: str | None) -> tuple[int, int] | None:
    """``K/N`` as (K, N); (0, 1) when not given; None (after a one-line error) when malformed."""
    if text is None:
        return (0, 1)
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n) <= 64):
        print(
            f"error: --shard {text!r} is not K/N with 0 <= K < N <= 64, e.g. 0/2", file=sys.stderr
        )
        return None
    return (int(k), int(n))


def _hash(s: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subset", action="store_true", help="the 2-checkpoint CI subset")
    ap.add_argument("--only", type=int, help="run only the first N cells (a partial grid)")
    ap.add_argument(
        "--shard",
        help="K/N: run only cells K, K+N, K+2N, ... (0-based; several "
        "processes share one --work; a run without --shard then writes the summary)",
    )
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "meta")
    ap.add_argument(
        "--cells",
        type=Path,
        help="where each cell's JSON is kept (default WORK/cells; "
        "the full grid's are committed in benchmarks/results/meta_eval_cells, so a "
        "later session resumes)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument(
        "--measured-only",
        action="store_true",
        help="run nothing: summarise the cells measured so far (a partial grid)",
    )
    ap.add_argument("--doc", action="store_true", help="write docs/meta-evaluation.md from --out")
    ap.add_argument("--check", action="store_true", help="with --doc: exit 1 if the doc differs")
    a = ap.parse_args(argv)
    if a.doc:
        if a.out.is_file():
            blocks = doc_blocks(json.loads(a.out.read_text()))
        elif a.out == OUT:  # nothing measured yet: the doc says so, with no number
            none = f"Not run yet: `{OUT.relative_to(ROOT)}` does not exist."
            blocks = {
                k: none
                for k in ("meta-time", "meta-auc", "meta-robust", "meta-cells", "meta-reading")
            }
        else:
            print(f"error: {a.out} does not exist; run the grid first", file=sys.stderr)
            return 2
        time_block = {"meta-time": blocks.pop("meta-time")}
        return write_or_check(DOC, blocks, a.check) or write_or_check(
            RESULTS, time_block, a.check, shared=True
        )
    if a.only is not None and a.only < 1:
        print("error: --only must be at least 1", file=sys.stderr)
        return 2
    shard = _shard(a.shard)
    if shard is None:
        return 2
    run = SUBSET if a.subset else FULL
    full = grid(a.subset)
    cells = full[: a.only] if a.only else full
    done = []
    for i, cell in enumerate(cells, 1):
        if (i - 1) % shard[1] != shard[0]:
            continue
        path = (a.cells or a.work / "cells") / f"{cell['key']}.json"
        h = _hash(settings_of(cell, run))
        if path.is_file() and json.loads(path.read_text()).get("settings_hash") == h:
            print(f"[{i}/{len(cells)}] {cell['key']}: done before, skipped", file=sys.stderr)
            done.append(json.loads(path.read_text()))
            continue
        if a.measured_only:
            continue
        print(f"[{i}/{len(cells)}] {cell['key']}: unlearn + evaluate ...", file=sys.stderr)
        r = run_cell(cell, run, a.work, a.keep)
        _write(path, r)
        done.append(r)
        sec = r["seconds"]
        print(f"[{i}/{len(cells)}] {cell['key']}: {sec['unlearn']:.0f} s + {sec['evaluate']:.0f} s, "
              f"recovered {r['truth']['recovered']}", file=sys.stderr)  # fmt: skip
    if shard != (0, 1):
        print(f"shard {a.shard} done: {len(done)} cells; run without --shard for the summary",
              file=sys.stderr)  # fmt: skip
        return 0
    if not done:
        print("error: no cell measured yet; run the grid first", file=sys.stderr)
        return 2
    kind = "subset" if a.subset else ("full grid" if len(done) == len(full) else
                                      f"partial grid ({len(done)} of {len(full)} checkpoints)")  # fmt: skip
    per = [sum(c["seconds"].values()) for c in done]
    loads = [c["load"] for c in done if c.get("load") is not None]
    summary = {
        "schema": "conceptvec.meta_eval/1", "kind": kind, "model": MODEL, "concepts": CONCEPTS,
        "run": run, "grid_size": len(full), "cells": done, "analysis": analyse(done),
        "seconds_per_checkpoint": sum(per) / len(per),
        "load": round(sum(loads) / len(loads), 1) if loads else None,
        "grid_edits": sum(c["method"] == "edit" for c in full),
    }  # fmt: skip
    _write(a.out, summary)
    print(
        f"wrote {a.out}: {len(done)} checkpoints, {sum(per) / len(per):.0f} s each", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
