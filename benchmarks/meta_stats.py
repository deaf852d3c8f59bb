"""The meta-evaluation's statistics and its doc: AUC with a seeded bootstrap interval per
measure, robustness, and the generated blocks of docs/meta-evaluation.md."""

from __future__ import annotations

from typing import Any

import numpy as np

MEASURES: dict[str, tuple[str, int]] = {
    "cosine": ("cosine of the vector to the base's", +1),
    "jaccard": ("Jaccard@200 of its top tokens", +1),
    "change_pct": ("change percentile in its layer", -1),
    "trace_label": ("trace label says hidden (intact/disconnected/drifted)", +1),
    "patch_recovery": ("patch recovery (per-position base activations)", +1),
    "depth_score": ("depth score", -1),
    "forget_drop": ("forget log p drop", -1),
    "rouge_l": ("ROUGE-L of the forget answers vs the base's", +1),
    "uds": ("UDS-style score (residual-stream patching per layer)", -1),
}
"""Each measure: what it is, and its sign: +1 when a higher value should mean "comes back"
(fixed before looking at the data; the AUC is not flipped to suit it)."""
HIDDEN = ("intact", "disconnected", "drifted")


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Return the ROC AUC of ``scores`` for ``labels`` (1 positive), ties counting half;
    None without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def bootstrap(
    scores: np.ndarray, labels: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Return the 95% percentile interval of the AUC over ``n`` resamples of the
    checkpoints (seeded; resamples with one class only are skipped)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i = rng.integers(0, len(scores), len(scores))
        a = auc(scores[i], labels[i])
        if a is not None:
            out.append(a)
    if not out:
        return None
    return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))


def spearman(x: list[float], y: list[float]) -> float | None:
    """Return Spearman's rank correlation (average ranks for ties); None if undefined."""
    if len(x) < 3:
        return None
    rx = _ranks(np.asarray(x, float))
    ry = _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = v.argsort(kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for val in np.unique(v):
        r[v == val] = r[v == val].mean()
    return r


def analyse(cells: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Return the AUC table and robustness of the grid's unlearned cells (controls apart)."""
    grid = [
        c for c in cells if c["method"] != "meta-control" and c["truth"]["comes_back"] is not None
    ]
    labels = np.array([1 if c["truth"]["comes_back"] else 0 for c in grid])
    rows = {}
    for name, (_, sign) in MEASURES.items():
        have = [(c["measures"].get(name), lab) for c, lab in zip(grid, labels)]
        have = [(v, lab) for v, lab in have if v is not None]
        if not have:
            rows[name] = {"status": "not measured", "n": 0}
            continue
        s = sign * np.array([float(v) for v, _ in have])
        lab = np.array([lab for _, lab in have])
        a = auc(s, lab)
        rows[name] = {
            "status": "measured" if a is not None else "one class only",
            "n": len(have), "auc": a, "ci95": bootstrap(s, lab, seed=seed) if a is not None else None,
            "distinct": len(set(s.tolist())),
            "constant": float(have[0][0]) if len(set(s.tolist())) == 1 else None,
        }  # fmt: skip
    robust = {}
    for name in ("cosine", "forget_drop"):
        robust[name] = {}
        for attack in ("quant4", "relearn"):
            pairs = [
                (c["measures"][name + "_b" if name == "forget_drop" else name],
                 c["robustness"][attack][name + "_b" if name == "forget_drop" else name])
                for c in grid if c.get("robustness")
            ]  # fmt: skip
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            robust[name][attack] = {
                "n": len(pairs),
                "spearman": spearman(*zip(*pairs)) if pairs else None,
            }
    return {
        "checkpoints": len(cells), "graded": len(grid), "comes_back": int(labels.sum()),
        "controls": sum(c["method"] == "meta-control" for c in cells),
        "auc": rows, "robustness": robust,
    }  # fmt: skip


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def doc_blocks(summary: dict[str, Any]) -> dict[str, str]:
    """The generated blocks of docs/meta-evaluation.md."""
    a = summary["analysis"]
    lines = ["| measure | sign | checkpoints | AUC | 95% interval |", "|---|---|---|---|---|"]
    for name, (what, sign) in MEASURES.items():
        r = a["auc"][name]
        if r["status"] == "not measured":
            lines.append(f"| {what} | {'+' if sign > 0 else '-'} | 0 | not measured | |")
            continue
        ci = r["ci95"]
        lines.append(
            f"| {what} | {'+' if sign > 0 else '-'} | {r['n']} | {_f(r.get('auc'), '.3f')} | "
            + ("-" if ci is None else f"{ci[0]:.3f} to {ci[1]:.3f}")
            + " |"
        )
    rob = ["| measure | attack | checkpoints | Spearman (before vs after) |", "|---|---|---|---|"]
    for name, by in a["robustness"].items():
        for attack, r in by.items():
            rob.append(f"| {name} | {attack} | {r['n']} | {_f(r['spearman'], '.3f')} |")
    rob.append("| every other measure | quant4, relearn | 0 | not measured |")
    cells = ["| checkpoint | method | strength | concept | recovered (held-out half) | base control gain | comes back | seconds |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in summary["cells"]:
        t = c["truth"]
        cb = "-" if t["comes_back"] is None else ("yes" if t["comes_back"] else "no")
        cells.append(
            f"| {c['key']} | {c['method']} | {c['strength']} | {c['concept']} | "
            f"{_f(t['recovered'], '.2f')} | {_f(t['base_control_gain'], '+.3f')} | {cb} | "
            f"{sum(c['seconds'].values()):.0f} |"
        )
    return {
        "meta-time": estimate(summary),
        "meta-auc": "\n".join(lines),
        "meta-robust": "\n".join(rob),
        "meta-cells": "\n".join(cells),
        "meta-reading": reading(summary),
    }


BEHAVIOURAL = ("forget_drop", "rouge_l")
GOAL = 0.9
"""Issue 20's goal for the depth score's AUC."""


def reading(summary: dict[str, Any]) -> str:
    """The page's reading of the AUC table, every clause decided by the numbers."""
    a, kind = summary["analysis"], summary["kind"]
    rows = a["auc"]
    measured = sorted(
        (n for n, r in rows.items() if r.get("auc") is not None),
        key=lambda n: -rows[n]["auc"],
    )
    head = (
        f"This is a **{kind}**: {a['checkpoints']} checkpoints ({a['controls']} controls), "
        f"{a['graded']} graded (the held-out half lost more than 0.01 nats/token), "
        f"{a['comes_back']} of which came back (recovered >= 0.5)."
    )
    if not measured:
        return head + " No measure could be graded (both classes are needed)."
    order = ", ".join(f"{MEASURES[n][0]} {rows[n]['auc']:.3f}" for n in measured)
    out = [head, f"Measures by AUC, best first: {order}."]
    few = min(a["comes_back"], a["graded"] - a["comes_back"])
    if few < 5:
        side = "did not come back" if few == a["graded"] - a["comes_back"] else "came back"
        out.append(
            f"Only {few} of the {a['graded']} graded checkpoints {side}, so every AUC rests on "
            f"{few * (a['graded'] - few)} pairs or fewer and its interval is wide."
        )
    d = rows.get("depth_score", {})
    if d.get("auc") is None:
        out.append("The depth score could not be graded on these checkpoints.")
    else:
        lo, hi = d["ci95"] or (None, None)
        goal = "reaches" if d["auc"] >= GOAL else "does not reach"
        out.append(
            f"The depth score's AUC is {d['auc']:.3f}"
            + ("" if lo is None else f" (95% interval {lo:.3f} to {hi:.3f})")
            + f"; it {goal} the goal of {GOAL}."
        )
        if d.get("distinct") == 1:
            out.append(
                f"It is {d['constant']:g} on every graded checkpoint, so it cannot rank them"
                + (
                    ": giving the vector back its base activation at every position recovered "
                    "nothing on any of them (patch recovery at or below 0)."
                    if d["constant"] == 1.0
                    else "."
                )
            )
        rivals = [n for n in (*BEHAVIOURAL, "uds") if rows.get(n, {}).get("auc") is not None]
        above = [n for n in rivals if d["auc"] > rows[n]["auc"]]
        below = [n for n in rivals if n not in above]
        if rivals:
            out.append(
                ("It is above " + ", ".join(MEASURES[n][0] for n in above) + ". " if above else "")
                + (
                    "It is not above " + ", ".join(MEASURES[n][0] for n in below) + ". "
                    if below
                    else ""
                )
                + "Where two intervals overlap, the data do not separate the two measures."
            )
    reversed_ = [n for n in measured if rows[n]["ci95"] and rows[n]["ci95"][1] < 0.5]
    if reversed_:
        out.append(
            "The data reverse the direction fixed in advance for "
            + ", ".join(f"{MEASURES[n][0]} (AUC {rows[n]['auc']:.3f})" for n in reversed_)
            + ": their whole interval lies below 0.5, so a value on the side expected to mean "
            "'does not come back' went with recovery (read flipped, 1 − AUC)."
        )
    best = measured[0]
    ci = rows[best]["ci95"]
    if ci is not None and ci[0] <= 0.5:
        out.append(
            "No measure predicts recovery better than chance in the direction fixed in "
            f"advance: the best, {MEASURES[best][0]} (AUC {rows[best]['auc']:.3f}), has an "
            f"interval that reaches {ci[0]:.3f}."
        )
    else:
        out.append(
            f"The best predictor of recovery here is {MEASURES[best][0]} (AUC "
            f"{rows[best]['auc']:.3f})."
        )
    if a["graded"] < 20:
        out.append(
            f"With {a['graded']} graded checkpoints the intervals are wide; no conclusion is "
            "drawn about which measure predicts recovery."
        )
    out.append(
        "A measure marked *not measured* had no value on any graded checkpoint and is not "
        "estimated."
    )
    return " ".join(out)


def estimate(summary: dict[str, Any], full_steps: int = 25) -> str:
    """The full grid's time, extrapolated from the measured checkpoints: evaluation time as
    measured, training time per step scaled to ``full_steps`` (edits train nothing)."""
    cells, run = summary["cells"], summary["run"]
    ev = [c["seconds"]["evaluate"] for c in cells]
    trained = [c for c in cells if c["method"] != "edit"]
    per_step = [c["seconds"]["unlearn"] / run["steps"] for c in trained]
    edit = [c["seconds"]["unlearn"] for c in cells if c["method"] == "edit"]
    n = summary["grid_size"]
    n_edit = summary.get("grid_edits", 6)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    total = n * mean(ev) + (n - n_edit) * mean(per_step) * full_steps + n_edit * mean(edit)
    return (
        f"Measured on the {summary['kind']} ({len(cells)} checkpoints, {run['steps']} training "
        f"steps, {run['questions'] or 'all'} questions per probe, this 2-core VM under load "
        f"{summary.get('load') or 'not recorded'}): evaluation {mean(ev):.0f} s per checkpoint, training "
        f"{mean(per_step):.1f} s per step"
        + (f", an edit {mean(edit):.0f} s" if edit else "")
        + f". The {len(cells)} checkpoints' own seconds sum to "
        + (
            f"**{sum(sum(c['seconds'].values()) for c in cells) / 3600:.1f} hours** of one "
            "process (run as two one-thread processes, `--shard 0/2` and `1/2`, the wall time "
            "is about half of that)"
            if summary["kind"] == "full grid"
            else f"{sum(sum(c['seconds'].values()) for c in cells) / 3600:.1f} hours of one "
            f"process; extrapolated to the full grid ({n} checkpoints, {full_steps} steps): "
            f"**{total / 3600:.1f} hours**"
        )
        + (
            " (a lower bound: the subset evaluates fewer questions than the full grid)"
            if summary["kind"] == "subset"
            else ""
        )
        + ". Issue 21's target is 6 hours on the idle VM."
    )
