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

``--build NAME [NAME ...]`` measures ``concepts build`` instead (issue 21), per concept, the
routes interleaved in one process (wall and process CPU seconds each):

- **naive**: the per-edit path the finder used before: one ``evaluate_qa`` per knockout
  (its controls scored together, its answers generated with the edit), every knockout's
  controls scored;
- **ours**: ``build_concepts`` as ``conceptvec concepts build`` runs it (every knockout of
  every candidate scored with one unedited pass per batch, the answers verified against
  the unedited ones);
- **floor**: the forward passes a build cannot avoid: the unedited model once over the
  activation stage's texts and once over the questions with their reference answers.

Each route's evidence is compared knockout by knockout (ours leaves the controls of knockouts
under ``min_drop`` unscored: those are compared without their control fields), and each
verdict with the committed
``conceptvec/data/smollm2_concepts_dev.json``:

    OMP_NUM_THREADS=1 python benchmarks/bench_concepts.py --build "Ancient Rome" Italy \
        --out benchmarks/results/concepts-build-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import torch
from benchio import command, emit

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


DEV = Path(__file__).resolve().parents[1] / "conceptvec" / "data" / "smollm2_concepts_dev.json"


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _per_edit(target, runs, *args, min_drop=None):  # noqa: ARG001 (the finder passes it)
    """The finder's knockouts as a script runs them: one evaluate_qa per knockout, every
    knockout's controls scored (``min_drop`` ignored)."""
    from conceptvec.concepts.validate import knockout

    return [knockout(target, n, mode, args[0], mean, *args[1:]) for n, mode, mean in runs]


CONTROL_FIELDS = (
    "drop_percentile",
    "specificity_percentile",
    "control_delta_concept",
    "control_delta_unrelated",
    "controls_skipped",
)


def _differs(naive: dict, ours: dict) -> bool:
    """Whether a candidate's evidence differs between the routes, where ours measured it:
    the knockouts whose controls ours left unscored (a drop under min_drop) are compared
    without their control fields, and the reasons (which quote them) are not compared."""
    keys = [k for k in naive if k not in ("knockouts", "reasons")]
    if any(naive[k] != ours[k] for k in keys) or len(naive["knockouts"]) != len(ours["knockouts"]):
        return True
    for a, b in zip(naive["knockouts"], ours["knockouts"]):
        skip = CONTROL_FIELDS if b.get("controls_skipped") else ("controls_skipped",)
        if {k: v for k, v in a.items() if k not in skip} != {
            k: v for k, v in b.items() if k not in skip
        }:
            return True
    return False


def _floor(model, entry, settings: dict):
    """One plain forward pass of the unedited model over what the build must read: the
    activation stage's texts, and each question with its reference answer."""
    from conceptvec.concepts.find import DEFAULT_UNRELATED_QA, _clip_texts
    from conceptvec.models.backends import resolve
    from conceptvec.qa import answer, prompt_texts, use_chat
    from conceptvec.reference_texts import REFERENCE_TEXTS

    tok, hf = model.tokenizer, model.hf
    unrelated = entry.unrelated_qa[:10] or list(DEFAULT_UNRELATED_QA)
    texts = _clip_texts(tok, [entry.wikipedia_content], settings["max_text_tokens"])
    texts += unrelated + list(REFERENCE_TEXTS)
    questions = entry.qa + unrelated
    target = resolve(model)
    chat = use_chat(target, None)
    refs = answer(target, questions, chat=chat, max_new_tokens=32)  # cached: not timed below
    qa_texts = [p + " " + a for p, a in zip(prompt_texts(target, questions, chat), refs)]

    def run() -> None:
        with torch.no_grad():
            for t in texts + qa_texts:
                ids = tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
                hf(input_ids=ids[:, : model.context_length or None], use_cache=False)

    return run


def build_rows(args) -> dict:
    """Time ``concepts build`` per concept: naive (per edit), ours, and the floor."""
    import os
    import tempfile

    from conceptvec.concepts import find as find_module
    from conceptvec.concepts.build import build_concepts

    committed = {e.concept: e for e in read_concepts(DEV)}
    model = cv.load("smollm2-135m", quiet=True)
    model.hf  # noqa: B018  (build the torch model before timing)
    settings = dict(candidates=8, validate=3, controls=10, max_text_tokens=2048)
    find = {k: v for k, v in settings.items() if k != "max_text_tokens"}
    entries = {e.concept: e for e in read_concepts(SAMPLE)}
    rows = []
    batched = find_module.knockouts
    for n, name in enumerate(args.build):
        entry = entries[name]
        row: dict = {"concept": name}
        order = ("ours", "naive") if n % 2 == 0 else ("naive", "ours")
        found = {}
        for route in order:
            find_module.knockouts = batched if route == "ours" else _per_edit
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "one.json")
                    res, wall, cpu = _timed(
                        partial(build_concepts, model, [entry], out, progress=False, **find)
                    )
            finally:
                find_module.knockouts = batched
            new, search = res[0]
            found[route] = search
            row[route] = {
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "stages_s": {k: round(v, 1) for k, v in search.seconds.items()},
                "verdict": new.extra.get("verdict"),
                "vector": f"L{new.layer}.{new.dim}",
            }
        _, wall, cpu = _timed(_floor(model, entry, settings))
        row["floor"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        a, b = ([c.to_dict() for c in found[r].candidates] for r in ("naive", "ours"))
        row["differs"] = [x["neuron"] for x, y in zip(a, b) if _differs(x, y)]
        row["same_evidence"] = not row["differs"]
        row["controls_skipped"] = sum(
            bool(k.get("controls_skipped")) for c in b for k in c["knockouts"]
        )
        row["knockouts"] = sum(len(c["knockouts"]) for c in b)
        c = committed[name]
        row["committed"] = {"verdict": c.extra.get("verdict"), "vector": f"L{c.layer}.{c.dim}"}
        row["same_verdict_as_committed"] = all(
            row[r]["verdict"] == row["committed"]["verdict"]
            and row[r]["vector"] == row["committed"]["vector"]
            for r in ("naive", "ours")
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"settings": settings, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", nargs="+", metavar="CONCEPT", help="time concepts build")
    ap.add_argument("--out", help="write the --build results here (JSON)")
    ap.add_argument("--concept", default="Ancient Rome")
    ap.add_argument("--validate", type=int, default=2)
    ap.add_argument("--controls", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.build:
        start = os.getloadavg()
        out = build_rows(args)
        out["machine"] = {**_machine(), "load_average_at_start": start}
        out["command"] = command()
        emit(out, Path(args.out) if args.out else None)
        return
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


def _machine() -> dict:
    import subprocess

    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((x.split(":", 1)[1].strip() for x in model.splitlines() if "Model name" in x), "")
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
