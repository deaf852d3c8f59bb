"""The unedited model's answers come from the disk cache when, and only when, the same
weights answered the same prompts before."""

from __future__ import annotations

import json

import pytest
import torch

import conceptvec as cv
from conceptvec import answer_cache, qa

from .conftest import build_tiny

QUESTIONS = ["What is the capital of Italy?", "Who built the Colosseum?", "Name a Roman god."]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTVEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(answer_cache, "_MEMORY", {})
    hf, tok = build_tiny("llama")
    return cv.load(hf, tokenizer=tok), hf


@pytest.fixture
def calls(monkeypatch):
    """Count the prompts that reach the generator."""
    seen: list[int] = []
    original = qa.generate_ids

    def counting(target, ids, *a, **k):
        seen.append(ids.shape[0])
        return original(target, ids, *a, **k)

    monkeypatch.setattr(qa, "generate_ids", counting)
    return seen


def test_second_call_reads_the_cache_with_the_same_answers(tiny, calls, tmp_path):
    model, _ = tiny
    first = qa.answer(model, QUESTIONS, max_new_tokens=5)
    assert sum(calls) == 3
    again = qa.answer(model, QUESTIONS[1:] + QUESTIONS[:1], max_new_tokens=5)
    assert sum(calls) == 3 and again == first[1:] + first[:1]
    fresh = qa.answer(model, QUESTIONS, max_new_tokens=5, cache=False)
    assert fresh == first and sum(calls) == 6
    files = list((tmp_path / "cache" / "answers").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["format"] == 1
    answer_cache._MEMORY.clear()  # a new process reads the file
    assert qa.answer(model, QUESTIONS, max_new_tokens=5) == first and sum(calls) == 6
    qa.answer(model, QUESTIONS, max_new_tokens=6)  # another length is another key
    assert sum(calls) == 9


def test_changed_weights_edits_and_hooks_are_never_served_from_the_cache(tiny, calls):
    model, hf = tiny
    qa.answer(model, QUESTIONS, max_new_tokens=4)
    qa.answer(model, QUESTIONS, [cv.zero("L1.3")], max_new_tokens=4)  # an edit: generated
    assert sum(calls) == 6
    handle = hf.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        qa.answer(model, QUESTIONS, max_new_tokens=4)  # a hook from outside: generated
    finally:
        handle.remove()
    assert sum(calls) == 9
    with torch.no_grad():  # changed in place through .data: no version counter moves
        hf.model.layers[1].mlp.down_proj.weight.data[0, 0] += 1e-3
    qa.answer(model, QUESTIONS, max_new_tokens=4)
    assert sum(calls) == 12


def test_a_damaged_cache_file_is_ignored(tiny, calls, tmp_path):
    model, hf = tiny
    first = qa.answer(model, QUESTIONS, max_new_tokens=4)
    path = next((tmp_path / "cache" / "answers").glob("*.json"))
    path.write_text('{"format": 1, "answers": [1, 2')
    answer_cache._MEMORY.clear()
    assert qa.answer(model, QUESTIONS, max_new_tokens=4) == first and sum(calls) == 6
    assert json.loads(path.read_text())["weights"] == answer_cache.weights_hash(hf)


def test_batched_answers_equal_one_question_at_a_time(tiny):
    model, _ = tiny
    one = [qa.answer(model, [q], max_new_tokens=8, cache=False)[0] for q in QUESTIONS]
    assert qa.answer(model, QUESTIONS, max_new_tokens=8, cache=False) == one
