"""Time the weights-only ``conceptvec eval`` of one checkpoint against its base as a user runs
it (issue 21, item 4: under 30 s on the idle VM): the whole command in a subprocess, model
loading included, and the report's own stage timings.

    python benchmarks/bench_eval_weights.py --unlearned runs/speed/rome-edit \\
        --out benchmarks/results/eval-weights-only-smollm2-idle.json

The command is ``conceptvec eval BASE UNLEARNED --concepts smollm2-dev --no-qa --no-trace``,
run ``--repeat`` times (wall seconds, and the child's user + system CPU seconds, each).
The GGUF conversion cache is warm after the first run on a machine; the first run here is
recorded as it came.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from bench_activation_atlas import cpu_model, load_average
from benchio import command, emit, timed_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--unlearned", required=True)
    ap.add_argument("--concepts", default="smollm2-dev")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out: dict = {"command": command(), "cpu": cpu_model(), "load_start": load_average()}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            "conceptvec", "eval", args.base, args.unlearned, "--concepts", args.concepts,
            "--no-qa", "--no-trace", "--out", str(report), "--overwrite",
        ]  # fmt: skip
        out["eval_command"] = " ".join(cmd[:-3])
        for _ in range(args.repeat):
            wall, cpu, _ = timed_run(cmd, check=True, stdout=subprocess.DEVNULL)
            timings = json.loads(report.read_text())["timings"]
            runs.append(
                {
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "timings": {k: round(v, 2) for k, v in timings.items()},
                }
            )
    out.update(runs=runs, load_end=load_average())
    emit(out, args.out)


if __name__ == "__main__":
    main()
