"""GPT-NeoX (Pythia) and Phi-3 beyond decoding: an atlas of a saved checkpoint folder,
activation edits against a hand-written hook on the down projection, and weight edits
against the model's own forward pass (Phi-3's gate and up are halves of one matrix).

Decoding and activation reading of both families run in the tests every family shares
(``test_decode_families``, ``test_activations``, ``test_atlas_twopass``, ``test_cli``).
"""

from __future__ import annotations

import pytest
import torch

import conceptvec as cv
from conceptvec.atlas import Atlas
from conceptvec.interventions import logits

from .conftest import build_tiny, run_cli

PROMPT = "The dog chased the cat across the garden"


def _down(hf, layer: int) -> torch.nn.Module:
    """The module whose input is the MLP activation, named by hand (not through the spec)."""
    if hf.config.model_type == "gpt_neox":
        return hf.gpt_neox.layers[layer].mlp.dense_4h_to_h
    return hf.model.layers[layer].mlp.down_proj


@pytest.fixture(scope="module")
def tiny():
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family)
        return cache[family]

    return get


@pytest.mark.parametrize("family", ["gpt_neox", "phi3"])
def test_map_of_a_saved_folder_holds_what_decode_gives(
    family, tiny_dir, tmp_path, monkeypatch, capsys
):
    folder, out = tiny_dir(family), tmp_path / "atlas"
    code, _, err = run_cli(
        ["map", str(folder), "-o", str(out), "-q", "-k", "5"], monkeypatch, capsys
    )
    assert code == 0, err
    model = cv.load(folder, quiet=True)
    atlas = Atlas(out)
    assert atlas.matrices == list(model.spec.matrices)
    for neuron in ("L0.3", "L2.60"):
        for matrix in model.spec.matrices:
            want = cv.decode(model, neuron, matrix=matrix, k=5)
            got = atlas.neuron(neuron, matrix)
            assert [t.id for t in got.top] == [t.id for t in want.top], (neuron, matrix)
            assert [t.id for t in got.bottom] == [t.id for t in want.bottom], (neuron, matrix)


@pytest.mark.parametrize("family", ["gpt_neox", "phi3"])
def test_clamp_and_zero_act_as_a_hook_on_the_down_projection(family, tiny):
    hf, tok = tiny(family)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    base = logits(hf, ids)
    for edit, fn in [
        (cv.clamp("L1.3", 4.0), lambda x: x[..., 3].fill_(4.0)),
        (cv.zero("L1.3"), lambda x: x[..., 3].zero_()),
        (cv.clamp("L2.9", -3.0, "last"), lambda x: x[..., -1, 9].fill_(-3.0)),
    ]:
        layer = cv.NeuronId.parse(edit.neuron).layer

        def pre(_m, args, fn=fn):
            x = args[0].clone()
            fn(x)
            return (x,)

        handle = _down(hf, layer).register_forward_pre_hook(pre)
        try:
            with torch.no_grad():
                want = hf(ids).logits.float()
        finally:
            handle.remove()
        got = logits(hf, ids, edit)
        assert torch.allclose(got, want, atol=1e-5), str(edit)
        assert not torch.allclose(got, base, atol=1e-4), f"{edit} changed nothing"
    assert torch.equal(logits(hf, ids), base)


@pytest.mark.parametrize("matrix", ["gate", "up"])
def test_phi3_zeroing_one_half_of_gate_up_silences_that_neuron(tiny, matrix):
    """Zeroing neuron 7's gate row (silu(0) = 0) or up row (x * 0) in the fused gate_up_proj
    must equal zeroing its activation: only true if the row is read from the right half."""
    hf, tok = tiny("phi3")
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    fused = hf.model.layers[1].mlp.gate_up_proj.weight
    before = fused.detach().clone()
    d_mlp = hf.config.intermediate_size
    want = logits(hf, ids, cv.zero("L1.7"))
    with cv.intervene(hf, [cv.zero_weights("L1.7", matrix=matrix)]):
        changed = (fused.detach() != before).any(dim=1).nonzero().flatten().tolist()
        row = 7 if matrix == "gate" else d_mlp + 7
        assert changed == [row] and not fused[row].any()
        got = logits(hf, ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(fused.detach(), before)
