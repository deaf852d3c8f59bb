"""Greedy answers to a concept's questions: one ``generate`` per question, conceptvec's
batched path (cold and from the answer cache), and the batched forward-pass floor.

    OMP_NUM_THREADS=1 python benchmarks/bench_qa.py --questions 20 --tokens 32 \\
        --out benchmarks/results/qa-smollm2-cpu.json

Routes, in one process, on the real SmolLM2 (float32), the "Ancient Rome" QA and unrelated
QA of the ConceptVectors dev sample:

- **naive**: for each question, the chat-templated prompt through ``model.generate`` alone
  (greedy, KV cache, ``max_new_tokens``);
- **conceptvec, cold**: ``conceptvec.qa.answer(model, questions)`` with an empty answer
  cache: left-padded batches of 16 with an attention mask through ``generate`` (KV cache),
  plus hashing the weights and writing the cache file;
- **conceptvec, warm**: the same call again: hashing the weights and reading the cache;
- **floor**: one forward pass per batch of 16 over each prompt followed by its answer
  (right-padded, no grad): the tokens generation must process, without its sequential steps.

Answers of the batched path are compared with the naive ones, question by question.
Wall and this process's CPU seconds are both reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import conceptvec as cv
from conceptvec import answer_cache, qa
from conceptvec.concepts import read_concepts


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> dict[str, float]:
    now = clock()
    return {"wall": now[0] - t[0], "cpu": now[1] - t[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concept", default="Ancient Rome")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    entry = next(e for e in read_concepts("conceptvectors-dev") if e.concept == args.concept)
    questions = (entry.qa + entry.unrelated_qa)[: args.questions]
    model = cv.load(args.model, quiet=True)
    hf, tok = model.hf, model.tokenizer
    texts = qa.prompt_texts(qa.resolve(model), questions, True)
    out: dict = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()} {platform.processor()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "questions": len(questions),
        "max_new_tokens": args.tokens,
    }

    t = clock()
    naive = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            new = hf.generate(ids, max_new_tokens=args.tokens, do_sample=False)[0, ids.shape[1] :]
            naive.append(tok.decode(new, skip_special_tokens=True).strip())
    out["naive"] = since(t)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["CONCEPTVEC_CACHE"] = cache
        t = clock()
        cold = qa.answer(model, questions, max_new_tokens=args.tokens)
        out["ours_cold"] = since(t)
        answer_cache._MEMORY.clear()  # as a new process would: read the file
        t = clock()
        warm = qa.answer(model, questions, max_new_tokens=args.tokens)
        out["ours_warm"] = since(t)

    rows = [
        tok(text, add_special_tokens=False)["input_ids"]
        + tok(a, add_special_tokens=False)["input_ids"][: args.tokens]
        for text, a in zip(texts, cold)
    ]
    t = clock()
    with torch.no_grad():
        for s in range(0, len(rows), 16):
            batch = rows[s : s + 16]
            width = max(len(r) for r in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            hf(input_ids=ids, attention_mask=mask)
    out["floor"] = since(t)
    out["same_as_naive"] = sum(a == b for a, b in zip(cold, naive))
    out["warm_same_as_cold"] = warm == cold
    for c in ("wall", "cpu"):
        out[f"naive_over_cold_{c}"] = out["naive"][c] / out["ours_cold"][c]
        out[f"cold_over_floor_{c}"] = out["ours_cold"][c] / out["floor"][c]
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
