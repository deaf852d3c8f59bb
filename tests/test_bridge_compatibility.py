"""A TransformerBridge in compatibility mode: its weights were rewritten, so decoding refuses.

``enable_compatibility_mode()`` folds the norms into the weights and centres them in place,
keeping no record of what it removed. Decoding such weights gives other tokens and scores
(issue 24), so loading the bridge as a model refuses in one line; running it (interventions
on activations) still works, since its forward pass is the model's.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings

import pytest
import torch

import conceptvec as cv
from conceptvec.errors import BadInterventionError, UnsupportedArchitectureError
from conceptvec.interventions import logits

from .conftest import build_tiny

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens") is None, reason="needs transformer-lens"
)


def bridge_of(hf, tok, **compat):
    """Return a TransformerBridge over a copy of ``hf``, in compatibility mode when asked
    (the bridge gets its own tokenizer too: TransformerLens edits the one it is given)."""
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            "meta-llama/Llama-3.2-1B", hf_model=copy.deepcopy(hf), tokenizer=copy.deepcopy(tok)
        )
        if compat:
            bridge.enable_compatibility_mode(disable_warnings=True, **compat)
    return bridge


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llama")


def test_decoding_a_processed_bridge_refuses_in_one_line(tiny):
    hf, tok = tiny
    bridge = bridge_of(hf, tok, fold_ln=True)
    up = bridge.original_model.model.layers[1].mlp.up_proj.weight
    assert not torch.equal(up, hf.model.layers[1].mlp.up_proj.weight)  # rewritten in place
    for call in (lambda: cv.decode(bridge, "L1.3"), lambda: cv.load(bridge)):
        with pytest.raises(UnsupportedArchitectureError, match="enable_compatibility_mode") as e:
            call()
        assert "\n" not in str(e.value)


def test_a_bridge_without_processing_decodes_as_the_hf_model(tiny):
    hf, tok = tiny
    for bridge in (bridge_of(hf, tok), bridge_of(hf, tok, no_processing=True)):
        got = cv.decode(bridge, ["L1.3", "L2.7"], k=5)
        want = cv.decode(cv.load(hf, tokenizer=tok), ["L1.3", "L2.7"], k=5)
        assert [d.top_tokens for d in got] == [d.top_tokens for d in want]


def test_a_processed_bridge_still_runs_activation_edits_but_not_weight_edits(tiny):
    hf, tok = tiny
    bridge = bridge_of(hf, tok, fold_ln=True)
    ids = tok("The dog chased the cat", return_tensors="pt")["input_ids"]
    edit = cv.clamp("L1.3", 6.0)
    got, want = logits(bridge, ids, edit), logits(hf, ids, edit)
    # centring the unembedding shifts every logit of a position by the same amount
    got, want = got - got.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    with pytest.raises(BadInterventionError, match="edits weights, but this TransformerBridge"):
        logits(bridge, ids, cv.zero_weights("L1.3"))
