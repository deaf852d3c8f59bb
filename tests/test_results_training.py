"""benchmarks/RESULTS.md's training table on the AMX CPU holds the numbers of its JSON."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_amx_training_table_holds_the_benchmark_numbers():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    d = json.loads((ROOT / "benchmarks/results/training-smollm2-cpu-amx.json").read_text())
    r = d["rows"][0]
    floor = r["floor"]["cpu"]
    for key, label in (
        ("naive", "| naive: plain float32 loop |"),
        ("ours_fp32", "| conceptvec, `--precision fp32` |"),
        (
            "ours_bf16-mixed",
            "| **conceptvec, `--precision bf16-mixed`** (the default here: `auto`) |",
        ),
        ("floor", "| floor: bf16 GEMMs of the step |"),
    ):
        w, c = r[key]["wall"], r[key]["cpu"]
        cells = (f" {w:.2f} | **{c:.2f}** | **{c / floor:.1f}x** |" if key == "ours_bf16-mixed"
                 else f" {w:.2f} | {c:.2f} | {c / floor:.1f}x |")  # fmt: skip
        if key == "floor":
            cells = f" {w:.2f} | {c:.2f} | 1x |"
        assert label + cells in text, label + cells
    ratio = r["naive_over_ours_cpu"]
    assert f"bf16-mixed gets **{ratio:.1f}x** (CPU seconds)" in text


def test_idle_science_loop_tables_are_the_scripts_output():
    """RESULTS.md's tables of the idle-VM run (training, the log p check, relearning,
    evaluation, concepts build) are what science_loop_tables.py makes of their JSONs."""
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "science_loop_tables.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
