"""Make every number of docs/evaluation.md from `conceptvec eval --out` reports.

    python benchmarks/eval_table.py                  # rewrite the doc's generated blocks
    python benchmarks/eval_table.py --check          # exit 1 if the committed doc differs
    python benchmarks/eval_table.py --table runs/eval/part*.json   # print the table only

The doc's blocks between ``<!-- generated: NAME -->`` markers (see docgen.py) are made here
from docs/data/smollm2_eval_rome_*.json: the reproduction table (one row per checkpoint and
concept, ordered by the method order of docs/unlearning.md: steps and lr from its
unlearning.json, forget / retain QA drop, the vector's cosine, Jaccard@200 and change
percentile, its activation on concept text, its label and the share each attack recovered)
and the sentences that quote those numbers. Percentiles print with one decimal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from docgen import write_or_check  # noqa: E402

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "evaluation.md"
DATA = [ROOT / "docs" / "data" / f"smollm2_eval_rome_{p}.json" for p in ("a", "b")]
ORDER = ["ga", "gd", "npo", "npo-gd", "npo-kl", "simnpo", "dpo", "rmu", "needle", "edit"]
HEAD = [
    "checkpoint", "method", "steps", "lr", "forget drop", "retain drop", "cosine",
    "Jaccard@200", "change pct (model / layer)", "act. on concept text", "label",
    "recovered: restore", "recovered: clamp", "(zeroed instead)", "recovered: quant4",
]  # fmt: skip


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _cos(c: float) -> str:
    if c == 1.0:
        return "1 (unchanged)"
    return f"{c:.7f}" if c < 0.9999995 else f"1-{1 - c:.1e}"


def _pct(v: dict) -> str:
    if v["rel_change"] == 0:
        return "unchanged"
    return f"{v['change_pct_model']:.1f} / {v['change_pct_layer']:.1f}"


def kept_of_k(jaccard: float, k: int) -> float:
    """Tokens of the base's top ``k`` still in the top ``k`` after, from Jaccard of two
    ``k``-sets: J = n / (2k − n), so n = 2kJ / (1 + J)."""
    return 2 * k * jaccard / (1 + jaccard)


def load(paths: list[Path]) -> list[dict]:
    """One entry per checkpoint and concept: the run's name and record, the concept's
    measurements, its recoveries by attack, and the report's settings and weights."""
    out = []
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        for run in report["runs"]:
            for c in run["concepts"]:
                out.append(
                    dict(name=run["name"], rec=run["record"], c=c, weights=run["weights"],
                         settings=report["settings"], file=Path(path).name,
                         attacks={r["attack"]: r for r in c["recovery"]})
                )  # fmt: skip
    order = {m: i for i, m in enumerate(ORDER)}
    out.sort(key=lambda e: (order.get(e["rec"].get("method"), 99), e["name"]))
    return out


def _rc(e: dict, name: str) -> str:
    r = e["attacks"].get(name)
    if r is None:
        return "-"
    if r["recovered"] is None:
        return "too little forgetting to measure"
    pct = "" if r.get("percentile") is None else f" (pct {r['percentile']:.1f})"
    return f"{r['recovered']:.2f}{pct}"


def row(e: dict) -> list[str]:
    """The table row of one checkpoint and concept."""
    rec, c = e["rec"], e["c"]
    v, t, b = c["vector"], c["trace"], c["behaviour"]
    return [
        e["name"], rec.get("method", "?"), str(rec.get("steps_done", "-")),
        _f(rec.get("lr"), "g"),
        _f(b.get("forget", {}).get("logprob_drop"), "+.3f"),
        _f(b.get("retain", {}).get("logprob_drop"), "+.3f"),
        _cos(v["cosine"]), f"{v['jaccard']:.3f}", _pct(v),
        "-" if t is None else f"{t['mean_base']:+.2f} -> {t['mean_unlearned']:+.2f}",
        c["label"], _rc(e, "recovery:restore"), _rc(e, "recovery:clamp"),
        _rc(e, "recovery:zero"), _rc(e, "quant4"),
    ]  # fmt: skip


def table(entries: list[dict]) -> str:
    """The markdown table, without the columns of attacks no row ran."""
    body = [row(e) for e in entries]
    keep = [i for i in range(len(HEAD)) if any(r[i] != "-" for r in body)]
    lines = ["| " + " | ".join(HEAD[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(r[i] for i in keep) + " |" for r in body]
    return "\n".join(lines)


def _by(entries: list[dict], name: str) -> dict:
    return next(e for e in entries if e["name"] == name)


def _columns(e: dict) -> tuple[int, int]:
    """Down columns in the model and in the vector's layer."""
    down = [m for m in e["weights"]["matrices"] if m["matrix"] == "down"]
    layer = int(e["c"]["vector"]["neuron"][1:].split(".")[0])
    return sum(m["vectors"] for m in down), next(m["vectors"] for m in down if m["layer"] == layer)


def _span(xs: list[float], fmt: str) -> str:
    lo, hi = format(min(xs), fmt), format(max(xs), fmt)
    return lo if lo == hi else f"{lo} to {hi}"


def blocks(entries: list[dict]) -> dict[str, str]:
    """Every generated block of docs/evaluation.md."""
    from eval_prose import findings, intro, scale

    ga = _by(entries, "rome-ga")
    n_model, n_layer = _columns(ga)
    layer = ga["c"]["vector"]["neuron"][1:].split(".")[0]
    controls = ga["settings"]["controls"]
    notes = (
        "*forget drop* / *retain drop*: base minus unlearned log p per answer token (positive: "
        "the base's answers became less likely). *change pct*: percentile of the vector's "
        f"relative change among all {n_model:,} down columns / the {n_layer:,} of layer "
        f'{layer} ("unchanged": the vector did not move at all, so a percentile would only '
        "rank ties). *act. on concept text*: the vector's mean activation on the concept's "
        "article, base -> unlearned (its standardised shift among its layer's neurons is in "
        "the text report). *recovered*: share of the lost forget-QA log p that came back, with "
        f"its percentile among {controls} random layer-{layer} neurons given the same treatment."
    )
    return {
        "eval-scale": scale(entries),
        "eval-signed": (
            f"The comparison is signed: the Rome vector fires at about "
            f'{ga["c"]["trace"]["mean_base"]:.1f} on Rome text (it *suppresses* " Roman" '
            f'there), so "still fires" means "still near {ga["c"]["trace"]["mean_base"]:.1f}".'
        ),
        "eval-intro": intro(entries),
        "eval-table": table(entries) + "\n\n" + notes,
        "eval-findings": findings(entries, n_model, n_layer),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the doc differs")
    ap.add_argument("--table", nargs="+", metavar="REPORT", help="print the table of these")
    a = ap.parse_args(argv)
    if a.table:
        print(table(load([Path(p) for p in a.table])))
        return 0
    return write_or_check(DOC, blocks(load(DATA)), a.check)


if __name__ == "__main__":
    sys.exit(main())
