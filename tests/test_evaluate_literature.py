"""Attacks from the literature with base controls, on tiny random Llamas: held-out
relearning, unrelated-text relearning, a GGUF Q4_0 round trip and the logit lens."""

from __future__ import annotations

import json

import pytest
import torch

from conceptvec.errors import EvaluationError
from conceptvec.evaluate import intrinsic, quantized
from conceptvec.evaluate.behaviour import gguf_q4_0

from .test_evaluate import KEY, _records, _variant


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("llama")


@pytest.fixture(scope="module")
def scrambled(tiny, tmp_path_factory):
    def edit(sd):
        w = sd[KEY.format(2)]
        g = torch.Generator().manual_seed(3)
        w[:, 7] = torch.randn(w.shape[0], generator=g) * 400 * w.abs().mean()

    return _variant(tiny, tmp_path_factory.mktemp("lit") / "scrambled", edit)


def test_attacks_with_base_controls(tiny, scrambled):
    concepts = _records({"Ancient Rome": (2, 7), "TensorFlow": (1, 4)})
    r = intrinsic(
        tiny, scrambled, concepts, names=["Ancient Rome"],
        attacks=("relearn", "relearn_heldout", "quant4_gguf", "logit_lens"),
        controls=2, max_questions=4, max_new_tokens=3, relearn_steps=2, trace_activations=False,
    )  # fmt: skip
    c = r.runs[0].concepts[0]
    by = {x.attack: x for x in c.recovery}
    assert set(by) == {"relearn", "relearn_heldout", "quant4_gguf", "logit_lens"}
    for name, x in by.items():  # every one measured on the base too
        assert x.base_logprob is not None and x.base_logprob < 0, name
        assert "the base moves" in x.detail, name
    held = by["relearn_heldout"]
    assert "on the other 2 questions" in held.detail and held.recovered is not None
    lens = by["logit_lens"]
    assert len(lens.profile["logprob"]) == 3 and len(lens.profile["best_rank"]) == 3
    # the last layer's residual through the final norm and head is the model's own output
    assert lens.profile["logprob"][-1] == pytest.approx(c.behaviour["forget"].logprob, abs=1e-4)
    assert lens.logprob == max(lens.profile["logprob"])
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["settings"]["quant4_gguf"]["format"] == "GGUF Q4_0"


def test_gguf_q4_0_round_trip_is_real_and_restores(tiny):
    from transformers import AutoModelForCausalLM

    w = torch.randn(8, 70)
    q = gguf_q4_0(w)
    assert q.shape == w.shape and not torch.equal(q, w)
    assert (q - w).abs().max() < w.abs().max() / 4  # 4 bits: within a quantization step
    assert len(torch.unique(q[0, :32])) <= 16  # at most 16 levels per block of 32
    hf = AutoModelForCausalLM.from_pretrained(tiny)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    with quantized(hf, roundtrip=gguf_q4_0) as n:
        assert n > 0 and not torch.equal(hf.state_dict()[KEY.format(0)], before[KEY.format(0)])
    assert all(torch.equal(v, before[k]) for k, v in hf.state_dict().items())


def test_heldout_relearn_needs_two_questions(tiny, scrambled):
    with pytest.raises(EvaluationError, match="at least 2 forget questions"):
        intrinsic(
            tiny, scrambled, _records({"Ancient Rome": (2, 7)}), attacks=("relearn_heldout",),
            max_questions=1,
        )  # fmt: skip
