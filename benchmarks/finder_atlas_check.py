"""Does an activation atlas help the concept finder? The candidate stage only, on the ten dev
concepts (issue 22, item 4).

    python benchmarks/finder_atlas_check.py --run --atlas runs/finder-atlas   # measure
    python benchmarks/finder_atlas_check.py            # rewrite the doc's generated block
    python benchmarks/finder_atlas_check.py --check    # exit 1 if the committed doc differs

``--run`` builds (or reuses) a SmolLM2-135M atlas of the down matrices with an activation part
over the ConceptVectors articles of the ten concepts (each cut to its first ``--chars``
characters; every layer), then for each concept of the packaged ``smollm2-dev`` file ranks
the finder's candidates from the weights as :func:`find_concept` does (name search and text
search, interleaved, ``--candidates`` of them), again with the atlas
(:mod:`conceptvec.concepts.atlas_rank`) and, for comparison, by each candidate's agreement
score (:mod:`conceptvec.atlas.agreement`), and records where the file's neuron (its ``Layer``
and ``Dim``: the vector the finder reported, with its verdict) stands in each order. No
knockout is run. The JSON goes to docs/data/finder_atlas_smollm2.json; the doc's block
``finder-atlas`` in docs/concepts.md is made from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from docgen import write_or_check  # noqa: E402

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "concepts.md"
DATA = ROOT / "docs" / "data" / "finder_atlas_smollm2.json"


def run(atlas_dir: Path, chars: int, candidates: int, model_name: str) -> dict:
    """Measure the ranks with and without the atlas; return the JSON record."""
    sys.path.insert(0, str(ROOT))
    import conceptvec
    from conceptvec.atlas import Atlas, build_atlas
    from conceptvec.atlas import corpus_pass as cp
    from conceptvec.atlas.corpus import Corpus
    from conceptvec.concepts.atlas_rank import context_counts, rank_with_atlas
    from conceptvec.concepts.find import merge_hits, search_concept, search_text_words
    from conceptvec.concepts.tokens import concept_tokens
    from conceptvec.data import concepts_file

    t0 = time.perf_counter()
    records = json.loads(concepts_file("smollm2-dev").read_text())
    articles = json.loads(concepts_file("conceptvectors-dev").read_text())
    atlas_dir.parent.mkdir(parents=True, exist_ok=True)
    corpus = atlas_dir.with_name(atlas_dir.name + "-articles.jsonl")
    lines = [json.dumps({"text": r["wikipedia_content"][:chars]}) for r in articles]
    tmp = corpus.with_name(f".{corpus.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, corpus)
    if not (atlas_dir / "manifest.json").exists():
        build_atlas(model_name, atlas_dir, matrices="down", progress=False)
    report = cp.add_activations(atlas_dir, Corpus(str(corpus)), progress=False)
    atlas = Atlas(atlas_dir)
    model = conceptvec.load(model_name, quiet=True)
    rows = []
    cache: dict[int, dict] = {}
    for r in records:
        name, want = r["Concept"], f"L{r['Layer']}.{r['Dim']}"
        concept = concept_tokens(model, name, [r["wikipedia_content"]])
        merged = merge_hits(
            search_concept(model, concept, top=candidates),
            search_text_words(model, concept, top=candidates),
            top=candidates,
        )
        neurons = [str(h.neuron) for h, _ in merged]
        counts = context_counts(atlas, neurons, concept.core_ids)
        after = [neurons[i] for i in rank_with_atlas(counts)]
        scores = [agreement(atlas, n, cache) for n in neurons]
        by_agreement = [neurons[i] for i in sorted(range(len(neurons)), key=lambda i: -scores[i])]
        rows.append(
            {
                "concept": name,
                "neuron": want,
                "verdict": r["verdict"],
                "core_words": [concept.texts.get(i, str(i)) for i in concept.core_ids],
                "rank_without": neurons.index(want) + 1 if want in neurons else None,
                "rank_with": after.index(want) + 1 if want in after else None,
                "rank_by_agreement": (
                    by_agreement.index(want) + 1 if want in by_agreement else None
                ),
                "count": counts[neurons.index(want)] if want in neurons else None,
                "candidates_with_count": sum(1 for c in counts if c),
                "without": neurons,
                "with": after,
                "counts": dict(zip(neurons, counts)),
                "agreement": dict(zip(neurons, scores)),
            }
        )
    return {
        "command": "python benchmarks/finder_atlas_check.py --run --atlas DIR "
        f"--chars {chars} --candidates {candidates} --model {model_name}",
        "model": model_name,
        "candidates": candidates,
        "chars_per_article": chars,
        "corpus": {"texts": report.texts, "tokens": report.tokens, "sha256": report.sha256},
        "layers": atlas.activations.layers if atlas.activations else [],
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.perf_counter() - t0, 1),
        "concepts": rows,
    }


def agreement(atlas, neuron: str, cache: dict[int, dict]) -> float:
    """Return the neuron's agreement score (down column; 0 with no exemplar counted)."""
    from conceptvec.atlas.agreement import layer_agreement
    from conceptvec.neurons import NeuronId

    nid = NeuronId.parse(neuron)
    if nid.layer not in cache:
        cache[nid.layer] = layer_agreement(atlas, nid.layer, "down")
    got = cache[nid.layer]
    counted = int(got["counted"][nid.index])
    return int(got["matched"][nid.index]) / counted if counted else 0.0


def _rank(x: int | None) -> str:
    return "-" if x is None else str(x)


def blocks(data: dict) -> dict[str, str]:
    """Return the doc's generated block from the JSON record."""
    rows = data["concepts"]
    better = sum(1 for r in rows if _moved(r) > 0)
    worse = sum(1 for r in rows if _moved(r) < 0)
    same = len(rows) - better - worse
    into = sum(
        1
        for r in rows
        if r["rank_with"] is not None
        and r["rank_with"] <= 3
        and (r["rank_without"] is None or r["rank_without"] > 3)
    )
    out_of = sum(
        1
        for r in rows
        if r["rank_without"] is not None
        and r["rank_without"] <= 3
        and (r["rank_with"] is None or r["rank_with"] > 3)
    )
    c = data["corpus"]
    head = (
        f"Corpus atlas: {data['model']}, every layer's down columns, over the ten "
        f"ConceptVectors articles (first {data['chars_per_article']} characters each: "
        f"{c['tokens']} tokens). Candidates: the finder's {data['candidates']} from the "
        'weights; "with" reorders them by how many of a candidate\'s exemplars hold the '
        "concept's name words (weight order kept among equal counts). The neuron is the "
        "`smollm2-dev` file's, with its verdict."
    )
    lines = [
        *textwrap.wrap(head, 95, break_on_hyphens=False),
        "",
        "| concept | neuron | verdict | rank without | rank with | its exemplars with the "
        "words | candidates with any | rank by agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concept']} | {r['neuron']} | {r['verdict']} | {_rank(r['rank_without'])} | "
            f"{_rank(r['rank_with'])} | {_rank(r['count'])} | {r['candidates_with_count']} | "
            f"{_rank(r['rank_by_agreement'])} |"
        )
    verdict = "helped" if better > worse and not out_of else "did not help"
    causal = [r for r in rows if r["verdict"] == "concept"]
    moves = ", ".join(
        f"{r['concept']} {_rank(r['rank_without'])} to {_rank(r['rank_with'])}" for r in causal
    )
    prose = (
        f"**The atlas {verdict} at the candidate stage:** the file's neuron moved up for "
        f'{better} concepts, down for {worse}, and stayed for {same} ("-": not among the '
        f"candidates); it entered the top 3 (the default `--validate`) for {into} and left it "
        f"for {out_of}. Of the {len(causal)} neurons whose verdict is `concept`: {moves}. The "
        "corpus is the concepts' own articles, so their words fill it; no knockout was run on "
        "the new order."
    )
    up = sum(1 for r in rows if _moved(r, "rank_by_agreement") > 0)
    down = sum(1 for r in rows if _moved(r, "rank_by_agreement") < 0)
    prose += (
        " Ordering the candidates by their agreement score instead (the down column's, see "
        f"[atlas.md](atlas.md)) moved the file's neuron up for {up} concepts and down for "
        f"{down}."
    )
    lines += ["", *textwrap.wrap(prose, 95, break_on_hyphens=False)]
    return {"finder-atlas": "\n".join(lines) + "\n"}


def _moved(r: dict, key: str = "rank_with") -> int:
    a, b = r["rank_without"], r[key]
    if a is None or b is None:
        return 0
    return a - b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="store_true", help="measure (needs the real SmolLM2)")
    ap.add_argument("--atlas", type=Path, default=ROOT / "runs" / "finder-atlas")
    ap.add_argument("--chars", type=int, default=6000)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--check", action="store_true", help="exit 1 if the doc differs")
    a = ap.parse_args(argv)
    if a.run:
        if a.chars < 1 or a.candidates < 1:
            print("error: --chars and --candidates must be at least 1", file=sys.stderr)
            return 2
        data = run(a.atlas, a.chars, a.candidates, a.model)
        tmp = DATA.with_name(f".{DATA.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, DATA)
        print(f"wrote {DATA}", file=sys.stderr)
    if not DATA.exists():
        print(f"error: {DATA} is missing; run with --run first", file=sys.stderr)
        return 2
    return write_or_check(DOC, blocks(json.loads(DATA.read_text())), a.check)


if __name__ == "__main__":
    sys.exit(main())
