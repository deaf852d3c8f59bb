"""Time ``conceptvec concepts build`` of the ten dev concepts as a user runs it, and compare
every concept's verdict and vector with the committed ``smollm2_concepts_dev.json``.

    python benchmarks/bench_concepts_build.py --out benchmarks/results/concepts-build-ten-smollm2-cpu.json

The command is the one ``docs/concepts.md`` documents for the committed file (``--candidates
8 --validate 3 --controls 10``), run in a subprocess with a new, empty answer cache (the
GGUF conversion cache is shared, so only the model's answers start cold): wall seconds of
the whole command, its CPU seconds (user + system of the child), and seconds per concept.
The naive and floor columns of a concept build come from ``bench_concepts.py --build``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench_activation_atlas import cpu_model, load_average
from benchio import command, emit, timed_run

from conceptvec.data import concepts_file
from conceptvec.models.disk_cache import cache_root

COMMITTED = (
    Path(__file__).resolve().parents[1] / "conceptvec" / "data" / "smollm2_concepts_dev.json"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out: dict = {
        "command": command(),
        "cpu": cpu_model(),
        "load_start": load_average(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for shared in ("gguf", "derived"):  # the converted model, not the answers
            if (cache_root() / shared).is_dir():
                os.symlink(cache_root() / shared, cache / shared)
        built = Path(tmp) / "ours.json"
        cmd = [
            "conceptvec", "concepts", "build", "smollm2-135m",
            "--from", str(concepts_file("conceptvectors-dev")), "--out", str(built),
            "--candidates", "8", "--validate", "3", "--controls", "10",
        ]  # fmt: skip
        out["build_command"] = " ".join(
            cmd[:4] + ["--from", "conceptvectors-dev", "--out", "ours.json"]
        )
        env = {**os.environ, "CONCEPTVEC_CACHE": str(cache)}
        wall, cpu, _ = timed_run(cmd, check=True, env=env)
        records = json.loads(built.read_text())
    committed = {r["Concept"]: r for r in json.loads(COMMITTED.read_text())}
    rows = []
    for r in records:
        c = committed[r["Concept"]]
        mine = (r.get("verdict"), f"L{r['Layer']}.{r['Dim']}")
        theirs = (c.get("verdict"), f"L{c['Layer']}.{c['Dim']}")
        rows.append({"concept": r["Concept"], "ours": mine, "committed": theirs})
    out.update(_knockouts_against(records, committed))
    out.update(
        wall_s=round(wall, 1),
        cpu_s=round(cpu, 1),
        concepts=len(records),
        wall_s_per_concept=round(wall / max(len(records), 1), 1),
        rows=rows,
        same_as_committed=sum(r["ours"] == r["committed"] for r in rows),
        load_end=load_average(),
    )
    emit(out, args.out)


def _knockouts_against(records: list[dict], committed: dict[str, dict]) -> dict[str, int]:
    """Count the knockouts (of every validated candidate) whose own numbers equal the
    committed file's, those whose scored controls equal its controls, and those whose
    controls this build left unscored (a drop under min_drop)."""
    n = same = controls_same = skipped = 0
    for r in records:
        ours, theirs = _evidence(r), _evidence(committed[r["Concept"]])
        for neuron, ks in ours.items():
            for k, c in zip(ks, theirs.get(neuron, [])):
                n += 1
                same += (k["delta_concept"], k["delta_unrelated"], k["answers"]) == (
                    c["delta_concept"],
                    c["delta_unrelated"],
                    c["answers"],
                )
                if k.get("controls_skipped"):
                    skipped += 1
                else:
                    controls_same += k["control_delta_concept"] == c["control_delta_concept"]
    return {
        "knockouts": n,
        "knockouts_equal": same,
        "knockouts_controls_scored": n - skipped,
        "knockouts_controls_equal": controls_same,
    }


def _evidence(row: dict) -> dict[str, list[dict]]:
    """Each validated candidate's knockouts, by neuron."""
    cv = row.get("conceptvec") or {}
    found = [cv.get("vector")] + [o.get("evidence") for o in cv.get("others", [])]
    return {e["neuron"]: e["knockouts"] for e in found if e and e.get("knockouts")}


if __name__ == "__main__":
    main()
