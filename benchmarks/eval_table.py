"""Render the reproduction table of docs/evaluation.md from `conceptvec eval --out` reports.

    python benchmarks/eval_table.py runs/eval/part*.json

One row per checkpoint and concept, ordered by the method order of docs/unlearning.md:
method, steps and lr (from its unlearning.json), forget / retain QA drop (nats per answer
token, held-out questions), the concept vector's cosine, Jaccard@200 and change percentile,
its activation on concept text, its label, and the share of forget QA each attack recovered.
"""

from __future__ import annotations

import json
import sys

ORDER = ["ga", "gd", "npo", "npo-gd", "npo-kl", "simnpo", "dpo", "rmu", "needle", "edit"]


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _cos(c: float) -> str:
    return f"{c:.7f}" if c < 0.9999995 else f"1-{1 - c:.1e}"


def rows(paths: list[str]) -> list[list[str]]:
    out = []
    for path in paths:
        report = json.loads(open(path).read())
        for run in report["runs"]:
            rec = run["record"]
            for c in run["concepts"]:
                v, t, b = c["vector"], c["trace"], c["behaviour"]
                rec_by = {r["attack"]: r for r in c["recovery"]}

                def rc(name: str, rec_by=rec_by) -> str:
                    r = rec_by.get(name)
                    if r is None:
                        return "-"
                    if r["recovered"] is None:
                        return "nothing lost"
                    pct = "" if r.get("percentile") is None else f" (pct {r['percentile']:.0f})"
                    return f"{r['recovered']:.2f}{pct}"

                method = rec.get("method", "?")
                out.append(
                    [
                        run["name"],
                        method,
                        str(rec.get("steps_done", "-")),
                        _f(rec.get("lr"), "g"),
                        _f(b.get("forget", {}).get("logprob_drop"), "+.3f"),
                        _f(b.get("retain", {}).get("logprob_drop"), "+.3f"),
                        _cos(v["cosine"]),
                        f"{v['jaccard']:.3f}",
                        f"{v['change_pct_model']:.0f} / {v['change_pct_layer']:.0f}",
                        "-"
                        if t is None
                        else f"{t['mean_base']:+.2f} -> {t['mean_unlearned']:+.2f}",
                        c["label"],
                        rc("recovery:restore"),
                        rc("recovery:clamp"),
                        rc("recovery:zero"),
                        rc("quant4"),
                    ]
                )
    out.sort(key=lambda r: (ORDER.index(r[1]) if r[1] in ORDER else 99, r[0]))
    return out


def main() -> None:
    head = [
        "checkpoint",
        "method",
        "steps",
        "lr",
        "forget drop",
        "retain drop",
        "cosine",
        "Jaccard@200",
        "change pct (model / layer)",
        "act. on Rome text",
        "label",
        "recovered: restore",
        "recovered: clamp",
        "(zeroed instead)",
        "recovered: quant4",
    ]
    body = rows(sys.argv[1:])
    keep = [i for i in range(len(head)) if any(r[i] != "-" for r in body)]  # drop unrun attacks
    print("| " + " | ".join(head[i] for i in keep) + " |")
    print("|" + "---|" * len(keep))
    for r in body:
        print("| " + " | ".join(r[i] for i in keep) + " |")


if __name__ == "__main__":
    main()
