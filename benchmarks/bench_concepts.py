"""Benchmark the concept finder on the real SmolLM2-135M-Instruct (CPU).

One run measures, for one concept of the ConceptVectors dev sample:

- the **naive weights route** a researcher would write: project every down column of every
  layer through the LM head, keep each neuron's top and bottom 20 tokens, and scan their
  text for the concept's words;
- the **weights stage** of ``find_concept``: the concept's token set and the exact search of
  every down column on both signs (cold: first call; warm: again, head statistics cached);
- **generation**: the concept and unrelated questions answered one at a time vs. in one
  left-padded batch (the same greedy answers);
- **end to end**: ``find_concept`` with the given number of validated candidates, every
  knockout mode and the given number of controls, stage by stage.

    python benchmarks/bench_concepts.py --concept "Ancient Rome" --validate 2 --controls 10
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import conceptvec as cv
from conceptvec import qa
from conceptvec.concepts import concept_tokens, read_concepts
from conceptvec.concepts.find import search_concept
from conceptvec.concepts.tokens import name_words
from conceptvec.decoding import project, residual_vectors
from conceptvec.tokens import token_text

SAMPLE = (
    Path(__file__).resolve().parents[1] / "conceptvec" / "data" / "conceptvectors_dev_sample.json"
)


def naive_weights(model, name: str, k: int = 20) -> tuple[float, int]:
    """Decode every down column (top and bottom k) and scan for the name's words."""
    t0 = time.perf_counter()
    words = [w.lower() for w in name_words(name)]
    text = token_text(model.tokenizer)
    hits = 0
    for layer in range(model.dims.n_layers):
        scores = project(model, residual_vectors(model, layer, "down"))  # [d_mlp, vocab]
        for ids in (scores.topk(k, dim=1).indices, (-scores).topk(k, dim=1).indices):
            for row in ids.tolist():
                tokens = [text(i).strip().lower() for i in row]
                hits += any(w in t for t in tokens for w in words)
    return time.perf_counter() - t0, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="Ancient Rome")
    ap.add_argument("--validate", type=int, default=2)
    ap.add_argument("--controls", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    entry = next(e for e in read_concepts(SAMPLE) if e.concept == args.concept)
    model = cv.load("smollm2-135m", quiet=True)
    out: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"}

    out["naive_weights_s"], out["naive_hits"] = naive_weights(model, args.concept)
    for label in ("weights_cold_s", "weights_warm_s"):
        t0 = time.perf_counter()
        c = concept_tokens(model, args.concept, [entry.wikipedia_content])
        hits = search_concept(model, c, top=8)
        out[label] = time.perf_counter() - t0
    out["weights_top"] = [f"{h.neuron} {h.side}" for h in hits[:3]]

    questions = entry.qa + entry.unrelated_qa[:10]
    model.hf  # noqa: B018  (build the torch model before timing generation)
    t0 = time.perf_counter()
    single = [qa.answer(model, [q], max_new_tokens=32)[0] for q in questions]
    out["generate_one_at_a_time_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = qa.answer(model, questions, max_new_tokens=32)
    out["generate_batched_s"] = time.perf_counter() - t0
    out["generate_same_answers"] = sum(a == b for a, b in zip(single, batched))
    out["generate_questions"] = len(questions)

    t0 = time.perf_counter()
    r = cv.find_concept(
        model,
        args.concept,
        texts=[entry.wikipedia_content],
        qa=entry.qa,
        unrelated_qa=entry.unrelated_qa[:10],
        candidates=args.candidates,
        validate=args.validate,
        controls=args.controls,
        progress=False,
    )
    out["end_to_end_s"] = time.perf_counter() - t0
    out["stages_s"] = {k: round(v, 2) for k, v in r.seconds.items()}
    out["best"] = None if r.best is None else r.best.neuron
    out["settings"] = vars(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
