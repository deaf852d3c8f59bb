"""Print the markdown table of a built concepts file (``conceptvec concepts build``).

    python benchmarks/concepts_table.py conceptvec/data/smollm2_concepts_dev.json

One row per concept: the vector the build chose, its side and tokens, the knockout that hurt
the concept QA most (change of log p per reference-answer token on concept and unrelated QA,
BLEU of the new answers against the unablated ones, percentile of the drop among random
same-layer controls), the activation on concept text, and the verdict.
"""

from __future__ import annotations

import json
import sys

from conceptvec.data import resolve_concepts
from conceptvec.tokens import show


def main(path: str) -> None:
    records = json.loads(resolve_concepts(path).read_text(encoding="utf-8"))
    print(
        "| concept | vector | side | top tokens | act. on concept text | mode | concept QA "
        "dlogp | unrelated QA dlogp | concept BLEU | unrelated BLEU | control pct | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        v = r["conceptvec"].get("vector")
        if v is None:
            print(f"| {r['Concept']} | - | | | | | | | | | | none |")
            continue
        if "weights" not in v:  # named by the category check; its evidence was not recorded
            print(f"| {r['Concept']} | {v['neuron']} | {v['side']} | not recorded "
                  f"| | | | | | | | {v['verdict']} |")  # fmt: skip
            continue
        tokens = ", ".join(show(t) for t in v["weights"]["tokens"][:5]).replace("|", "\\|")
        a = v["activations"]
        act = "-" if a is None else f"{a['mean_concept']:+.2f}"
        k = min(v["knockouts"], key=lambda x: x["delta_concept"]) if v["knockouts"] else None

        def num(x, fmt):
            return "-" if x is None else format(x, fmt)

        cells = [
            r["Concept"],
            v["neuron"],
            v["weights"]["side"],
            f"`{tokens}`",
            act,
            "-" if k is None else k["mode"],
            num(k and k["delta_concept"], "+.4f"),
            num(k and k["delta_unrelated"], "+.4f"),
            num(k and k["bleu_concept"], ".2f"),
            num(k and k["bleu_unrelated"], ".2f"),
            "not measured"
            if k and k.get("controls_skipped")
            else num(k and k["drop_percentile"], ".0f"),
            f"**{v['verdict']}**" if v["verdict"] == "concept" else v["verdict"],
        ]
        print("| " + " | ".join(cells) + " |")

    shared = {}
    for r in records:
        for o in r["conceptvec"].get("others") or []:
            if o.get("shared_with") and o.get("evidence") and o["verdict"] == "category":
                shared.setdefault(o["neuron"], (o, set()))[1].update(
                    [r["Concept"], *o["shared_with"]]
                )
    if shared:
        print()
        print("| category neuron (validated) | side | top tokens | candidate of |")
        print("|---|---|---|---|")
        for neuron, (o, concepts) in sorted(shared.items(), key=lambda x: -len(x[1][1])):
            tokens = ", ".join(show(t) for t in o["evidence"]["weights"]["tokens"][:5])
            tokens = tokens.replace("|", "\\|")
            print(f"| {neuron} | {o['side']} | `{tokens}` | {', '.join(sorted(concepts))} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2-dev")
