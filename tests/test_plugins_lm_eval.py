"""lm-eval export on a tiny random Llama: real lm_eval runs the tasks and reproduces
conceptvec's own QA numbers; bad input fails in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import conceptvec as cv
from conceptvec.concepts import read_concepts
from conceptvec.data import concepts_file
from conceptvec.plugins import PluginError, export_lm_eval
from conceptvec.plugins.lm_eval_export import MANIFEST
from tests.conftest import run_cli

SAMPLE = concepts_file("conceptvectors-dev")
FAST = dict(max_new_tokens=6, batch_size=4)


@pytest.fixture(scope="module")
def rome():
    return next(e for e in read_concepts(SAMPLE) if e.concept == "Ancient Rome")


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_eval") / "rome"
    return export_lm_eval(tiny_dir("llama"), SAMPLE, "ancient rome", out, **FAST)


def _run(folder: Path, model_dir: Path, tasks: list[str], limit: int, **kw) -> dict:
    """Run real lm_eval on ``tasks`` from ``folder`` (``--include_path``) with the HF model."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(folder)),
        limit=limit,
        log_samples=True,
        device="cpu",
        **kw,
    )


def _teacher_forced(m, prompt: str, continuation: str) -> float:
    """Sum of log p of ``continuation``'s tokens after ``prompt`` (as lm-eval splits them)."""
    import torch

    ctx = m.tokenizer(prompt)["input_ids"]
    whole = m.tokenizer(prompt + continuation)["input_ids"]
    with torch.no_grad():
        logp = m.hf(torch.tensor([whole])).logits[0].log_softmax(-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_export_writes_tasks_data_and_manifest(exported, rome):
    folder = exported.folder
    assert exported.tag == "conceptvec_ancient_rome" and exported.prompting == "paper"
    names = [t.name for t in exported.tasks]
    for s in ("forget_qa", "unrelated_qa", "completion"):
        assert f"conceptvec_ancient_rome_{s}" in names
        assert (folder / f"conceptvec_ancient_rome_{s}.yaml").is_file()
    docs = [json.loads(x) for x in (folder / "forget_qa.jsonl").read_text().splitlines()]
    assert [d["question"] for d in docs] == [q.strip() for q in rome.qa]
    assert docs[0]["prompt"] == f"Question: {rome.qa[0].strip()}\n Answer:"
    # the continuation is the answer exactly as generated; the reference is it stripped
    assert all(d["continuation"].strip() == d["reference"] for d in docs)
    assert "num_fewshot: 0" in (folder / "conceptvec_ancient_rome_forget_qa.yaml").read_text()
    record = json.loads((folder / MANIFEST).read_text())
    assert record["command"].endswith(f"--include_path {folder} --tasks conceptvec_ancient_rome")
    assert record["tasks"][0]["reference"] == "model" and record["schema"] == 1


def test_lm_eval_reproduces_conceptvec_qa(exported, tiny_dir):
    from conceptvec.qa import answer_logprobs

    tasks = ["conceptvec_ancient_rome_forget_qa", "conceptvec_ancient_rome_forget_qa_logprob"]
    res = _run(exported.folder, tiny_dir("llama"), tasks, limit=3)
    gen, lp = (res["results"][t] for t in tasks)
    # the references are this model's own greedy answers: lm_eval must generate them again
    assert gen["exact_match,none"] == 1.0 and gen["rouge_l,none"] == pytest.approx(1.0)
    assert set(gen) >= {"sentence_bleu,none", "exact_match,none"} and "bleu,none" not in gen
    docs = [json.loads(x) for x in (exported.folder / "forget_qa.jsonl").read_text().splitlines()]
    # the continuation scored is the answer exactly as generated; where that is " " + the
    # stripped answer (the paper prompt's usual case), it is conceptvec's own number
    m = cv.load(str(tiny_dir("llama")), quiet=True)
    exact = [_teacher_forced(m, d["prompt"], d["continuation"]) / d["reference_tokens"]
             for d in docs[:3]]  # fmt: skip
    assert lp["logprob,none"] == pytest.approx(sum(exact) / 3, abs=1e-3)  # random junk answers
    for d, e in zip(docs[:3], exact):
        if d["continuation"] == " " + d["reference"]:
            assert answer_logprobs(m, [d["question"]], [d["reference"]])[0] == pytest.approx(e)
    # may re-tokenize differently from how they were generated, so "greedy" is checked on
    # the real model (test_plugins_lm_eval_real.py)
    sample = res["samples"][tasks[0]][0]
    assert sample["arguments"][0][0] == docs[0]["prompt"]  # the prompt conceptvec uses


def test_gold_answers_become_the_references(tiny_dir, rome, tmp_path):
    gold = {q: f"answer {i}" for i, q in enumerate(rome.qa)}
    ex = export_lm_eval(
        tiny_dir("llama"), SAMPLE, "Ancient Rome", tmp_path / "g", gold=gold,
        sets=["forget_qa"], **FAST,
    )  # fmt: skip
    assert {t.reference for t in ex.tasks} == {"gold"}
    docs = [json.loads(x) for x in (tmp_path / "g" / "forget_qa.jsonl").read_text().splitlines()]
    assert [d["reference"] for d in docs] == [f"answer {i}" for i in range(len(rome.qa))]


def test_empty_sets_are_skipped_and_recorded(tiny_dir, tmp_path):
    record = {"Concept": "Solo", "QA": [" Who?\n"], "unrelated_QA": [], "text_completion": []}
    ex = export_lm_eval(tiny_dir("llama"), [record], None, tmp_path / "solo", **FAST)
    assert [t.name for t in ex.tasks] == [
        "conceptvec_solo_forget_qa",
        "conceptvec_solo_forget_qa_logprob",
    ]
    assert ex.skipped == ["unrelated_qa", "completion"]
    with pytest.raises(PluginError, match="no questions in completion"):
        export_lm_eval(tiny_dir("llama"), [record], None, tmp_path / "none", sets=["completion"])


def test_overwrite_replaces_only_an_earlier_export(tiny_dir, tmp_path):
    out = tmp_path / "x"
    args = (tiny_dir("llama"), SAMPLE, "Ancient Rome", out)
    export_lm_eval(*args, sets=["forget_qa"], **FAST)
    with pytest.raises(PluginError, match="exists; pass --overwrite"):
        export_lm_eval(*args, sets=["forget_qa"], **FAST)
    ex = export_lm_eval(*args, sets=["completion"], overwrite=True, **FAST)
    assert {t.set for t in ex.tasks} == {"completion"} and not (out / "forget_qa.jsonl").exists()

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(PluginError, match="not ours to replace"):
        export_lm_eval(tiny_dir("llama"), SAMPLE, "Ancient Rome", theirs, overwrite=True)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(concept="Atlantis"), "no concept 'Atlantis'"),
        (dict(concept=None), "holds 10 concepts|hold 10 concepts"),
        (dict(sets=["trivia"]), "unknown question set trivia"),
        (dict(gold={" What was the official language of Ancient Rome?\n": "Latin"}), "cover 1"),
        (dict(out="missing/dir/out"), "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_dir, tmp_path, kwargs, message):
    kw = dict(concept="Ancient Rome", out=tmp_path / "out", **FAST) | kwargs
    if isinstance(kw["out"], str):
        kw["out"] = tmp_path / kw["out"]
    with pytest.raises(PluginError, match=message) as e:
        export_lm_eval(tiny_dir("llama"), SAMPLE, kw.pop("concept"), kw.pop("out"), **kw)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_and_refuses_bad_input(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    base = ["plugins", "lm-eval", str(tiny_dir("llama")), "--concepts", str(SAMPLE)]
    fast = ["--sets", "forget_qa", "--max-new-tokens", "4"]
    code, stdout, err = run_cli([*base, "--concept", "Poland", "--out", str(out), *fast, "--json"],
                                monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["tag"] == "conceptvec_poland" and (out / MANIFEST).is_file()
    code, _, err = run_cli([*base, "--concept", "Poland", "--out", str(out), *fast],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run_cli([*base, "--concept", "Nowhere", "--out", str(tmp_path / "n")],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "no concept 'Nowhere'" in err and not (tmp_path / "n").exists()


def test_num_fewshot_is_refused_by_the_task_config(exported, tiny_dir):
    """--num_fewshot would draw examples from the test questions and nest two chat turns:
    the tasks set num_fewshot 0, which lm-eval keeps over the command line's value."""
    task = "conceptvec_ancient_rome_forget_qa"
    res = _run(exported.folder, tiny_dir("llama"), [task], limit=2, num_fewshot=1)
    docs = [json.loads(x) for x in (exported.folder / "forget_qa.jsonl").read_text().splitlines()]
    prompts = [s["arguments"][0][0] for s in res["samples"][task]]
    assert prompts == [d["prompt"] for d in docs[:2]]  # no example put in front
    assert res["n-shot"][task] == 0
