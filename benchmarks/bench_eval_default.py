"""Time ``conceptvec eval`` with its default settings on one checkpoint against its base
(issue 21, item 4): QA and text completion, the activation trace and the recovery attack,
per concept vector, against random-neuron controls.

    python benchmarks/bench_eval_default.py --unlearned runs/speed/rome-edit \\
        --concept "Ancient Rome" --naive --out benchmarks/results/eval-default-smollm2-cpu.json
    python benchmarks/bench_eval_default.py --unlearned runs/speed/rome-edit \\
        --out benchmarks/results/eval-default-smollm2-cpu-all.json      # every concept

Routes, in one process (wall and this process's CPU seconds each):

- **conceptvec, cold**: ``conceptvec.evaluate.intrinsic`` with the CLI's defaults
  (``attacks=["recovery"]``, 5 controls, 32-token answers), the answer cache in a new empty
  folder, so the base model's answers are generated too; the report's stage timings;
- **conceptvec, warm**: the same again: the base's answers now come from the cache, as on
  every later checkpoint of the same base;
- **naive** (``--naive``, the first concept only): the script a researcher writes for the
  same measurements: one ``model.generate`` per probe for the base and for the unlearned
  model, one forward pass per probe for each teacher-forced log p, the concept text through
  both models, and for the recovery attack one forward pass per question for each of the
  18 edits (clamp, zero and restore, on the vector and 5 controls) plus one ``generate``
  per question under each of the vector's 3 edits;
- **floor**: the forward passes no evaluation of these probes can avoid: base and unlearned
  over every probe's prompt followed by its reference answer (batched, no generation's
  sequential steps) and over the concept text.

The naive route's log p values are compared with the report's (they must agree to float
rounding). The reports of the cold and warm routes must be equal.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from bench_activation_atlas import cpu_model, load_average
from benchio import command, emit

import conceptvec as cv
from conceptvec import answer_cache, qa
from conceptvec.evaluate import intrinsic
from conceptvec.evaluate.concepts import eval_concepts
from conceptvec.evaluate.trace import concept_text
from conceptvec.interventions import Intervention, clamp, replace_weights
from conceptvec.interventions.controls import random_controls
from conceptvec.models.backends import resolve


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> dict[str, float]:
    now = clock()
    return {"wall": round(now[0] - t[0], 2), "cpu": round(now[1] - t[1], 2)}


def ours(args: argparse.Namespace, names: list[str] | None) -> tuple[dict, Any]:
    t = clock()
    rep = intrinsic(
        args.base, args.unlearned, args.concepts, names=names, attacks=["recovery"],
        progress=False,
    )  # fmt: skip
    return {**since(t), "timings": {k: round(v, 2) for k, v in rep.timings.items()}}, rep


def probes_of(item: Any, c: dict) -> list[tuple[str, list[str], list[str], bool]]:
    """(side, prompts, the base's answers, raw) of concept ``item`` as report entry ``c`` (a
    report's JSON) ran it (the CLI's defaults: every question, each completion's first half)."""
    prompts = {
        "forget": item.qa,
        "retain": item.unrelated_qa,
        "completion": [tc.first_half for tc in item.completions],
    }
    return [
        (side, list(prompts[side]), p["base"]["answers"], side == "completion")
        for side, p in c["behaviour"].items()
        if p["base"]["answers"]
    ]


def naive(args: argparse.Namespace, rep: Any) -> dict:
    """One generate / one forward per probe, as a researcher's own script does it."""
    base, unl = cv.load(args.base, quiet=True), cv.load(args.unlearned, quiet=True)
    tb, tu = resolve(base), resolve(unl)
    c = rep["runs"][0]["concepts"][0]
    item = eval_concepts(args.concepts, None, [c["concept"]])[0]
    tok = tb.tokenizer
    t = clock()
    logp: dict[str, list[float]] = {}

    def one_logp(target: Any, prompt_ids: list[int], ref_ids: list[int]) -> float:
        ids = torch.tensor([prompt_ids + ref_ids])
        with torch.no_grad():
            out = target.hf(input_ids=ids).logits[0].float().log_softmax(-1)
        n = len(prompt_ids)
        return float(sum(out[n - 1 + j, r] for j, r in enumerate(ref_ids)) / max(len(ref_ids), 1))

    def one_answer(target: Any, prompt_ids: list[int]) -> list[int]:
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            new = target.hf.generate(ids, max_new_tokens=32, do_sample=False)
        return new[0, ids.shape[1] :].tolist()

    for side, prompts, refs, raw in probes_of(item, c):
        rows = qa._prompt_rows(tb, prompts, None, raw)
        sep = "" if not raw else " "
        tails = [tok(sep + r.strip(), add_special_tokens=False)["input_ids"] for r in refs]
        for target, who in ((tb, "base"), (tu, "unlearned")):
            for row in rows:
                one_answer(target, row)
            logp[f"{who}:{side}"] = [one_logp(target, h, tl) for h, tl in zip(rows, tails)]
    texts = concept_text(item.text)
    for target in (tb, tu):
        for text in texts:
            with torch.no_grad():
                target.hf(input_ids=torch.tensor([target.encode(text)[:256]]))
    _, prompts, refs, _ = probes_of(item, c)[0]
    rows = qa._prompt_rows(tb, prompts, None, False)
    tails = [tok(r.strip(), add_special_tokens=False)["input_ids"] for r in refs]
    ctrl = [e[0].neuron for e in random_controls([clamp(item.neuron, 0.0)], 1536, 5, 0)]
    for n in [item.neuron, *ctrl]:
        for edit in (clamp(n, 0.0), clamp(n, 1.0), replace_weights(n, base.neuron_vector(n))):
            with Intervention(tu, [edit]):
                for h, tl in zip(rows, tails):
                    one_logp(tu, h, tl)
                if n == item.neuron:
                    for row in rows:
                        one_answer(tu, row)
    out = since(t)
    ours_lp = c["behaviour"]["forget"]["unlearned"]["per_question"]
    out["max_logp_difference_vs_ours"] = max(
        abs(a - b) for a, b in zip(logp["unlearned:forget"], ours_lp)
    )
    return out


def floor(args: argparse.Namespace, rep: dict) -> dict:
    """Batched forward passes, base and unlearned, over every distinct probe + reference
    (a row that several concepts share is read once, as the evaluation reads it) and over
    each concept's text."""
    base, unl = cv.load(args.base, quiet=True), cv.load(args.unlearned, quiet=True)
    tb, tu = resolve(base), resolve(unl)
    concepts = rep["runs"][0]["concepts"]
    items = {
        i.name: i for i in eval_concepts(args.concepts, None, [c["concept"] for c in concepts])
    }
    rows: dict[bool, dict[tuple[str, str], None]] = {False: {}, True: {}}
    for c in concepts:
        for _side, prompts, refs, raw in probes_of(items[c["concept"]], c):
            rows[raw].update(dict.fromkeys(zip(prompts, refs)))
    t = clock()
    for raw, pairs in rows.items():
        if pairs:
            for target in (tb, tu):
                qa.answer_logprobs(target, [p for p, _ in pairs], [r for _, r in pairs], raw=raw)
    for c in concepts:
        texts = concept_text(items[c["concept"]].text)
        for target in (tb, tu):
            for s in range(0, len(texts), 8):
                batch = qa._right_pad([target.encode(x)[:256] for x in texts[s : s + 8]], 0)
                with torch.no_grad():
                    target.hf(input_ids=batch)
    return {**since(t), "distinct_rows": sum(len(p) for p in rows.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--unlearned", required=True)
    ap.add_argument("--concepts", default="smollm2-dev")
    ap.add_argument("--concept", action="append", help="only these concepts (repeatable)")
    ap.add_argument("--naive", action="store_true", help="time the naive script (1st concept)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", type=Path, help="also write the cold run's report (JSON)")
    ap.add_argument(
        "--floor-from", type=Path, metavar="REPORT",
        help="only (re)measure the floor, from a cold run's --report; update --out",
    )  # fmt: skip
    args = ap.parse_args()
    if args.floor_from:
        out = json.loads(args.out.read_text())
        out["floor"] = floor(args, json.loads(args.floor_from.read_text()))
        out["floor_command"] = command()
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out["floor"]))
        return
    names = args.concept
    out: dict[str, Any] = {
        "command": command(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": load_average(),
    }
    with tempfile.TemporaryDirectory() as cache:
        folder = Path(cache)
        with mock.patch.object(answer_cache, "_path", lambda w: folder / f"{w}.json"):
            out["ours_cold"], rep = ours(args, names)
            out["ours_warm"], again = ours(args, names)
    out["warm_report_equal"] = json.dumps(rep.to_dict()["runs"]) == json.dumps(
        again.to_dict()["runs"]
    )
    out["concepts"] = [c.concept for c in rep.runs[0].concepts]
    if args.report:
        rep.write_json(args.report, overwrite=True)
    out["floor"] = floor(args, rep.to_dict())
    if args.naive:
        out["naive"] = naive(args, rep.to_dict())
    out["load_end"] = load_average()
    emit(out, args.out)


if __name__ == "__main__":
    main()
