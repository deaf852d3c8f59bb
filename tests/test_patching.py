"""Activation patching (issue 20): ``patch``, ``patch_mlp`` and ``patch_resid`` set
activations per position from a tensor, on every backend, with the restore guarantees of
the other edits. Patching a run's own cached activations back reproduces its logits; patching
another run's changes them (the whole residual stream gives exactly the other run's)."""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack

import pytest
import torch

import conceptvec as cv
from conceptvec.errors import BadInterventionError
from conceptvec.interventions import generate, intervene, logits, patch_mlp, patch_resid

from .conftest import build_tiny

HAS_BOTH = all(importlib.util.find_spec(m) for m in ("transformer_lens", "nnsight"))


def cached(hf, ids, layer):
    """Return (MLP activation, residual after ``layer``, logits) of one plain forward pass."""
    seen = {}
    block = hf.model.layers[layer]

    def mlp(_m, args):
        seen["mlp"] = args[0].detach().clone()

    def resid(_m, _a, out):
        seen["resid"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    handles = [
        block.mlp.down_proj.register_forward_pre_hook(mlp),
        block.register_forward_hook(resid),
    ]
    try:
        with torch.no_grad():
            out = hf(input_ids=ids).logits.float()
    finally:
        for h in handles:
            h.remove()
    return seen["mlp"], seen["resid"], out


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def tiny():
    hf, tok = build_tiny("llama")
    a = tok("The dog chased the cat", return_tensors="pt")["input_ids"]
    b = tok("Paris is the capital of", return_tensors="pt")["input_ids"]
    n = min(a.shape[1], b.shape[1])
    return hf, tok, a[:, :n], b[:, :n]


def test_patching_a_runs_own_activations_reproduces_it_exactly(tiny):
    hf, _, a, _ = tiny
    mlp, resid, base = cached(hf, a, 1)
    for edit in (cv.patch("L1.3", mlp[0, :, 3]), patch_mlp(1, mlp[0]), patch_resid(1, resid)):
        assert torch.equal(logits(hf, a, edit), base), edit
    assert _hooks(hf) == 0


def test_patching_another_runs_activations_changes_the_logits(tiny):
    hf, _, a, b = tiny
    mlp_b, resid_b, logits_b = cached(hf, b, 1)
    _, _, base = cached(hf, a, 1)
    for edit in (cv.patch("L1.3", mlp_b[0, :, 3] + 5.0), patch_mlp(1, mlp_b[0])):
        assert not torch.allclose(logits(hf, a, edit), base, atol=1e-4), edit
    # the whole residual stream after layer 1 is run b's: so is everything after it
    assert torch.allclose(logits(hf, a, patch_resid(1, resid_b[0])), logits_b, atol=1e-5)
    # a constant patch is a clamp
    const = cv.patch("L1.3", torch.full((a.shape[1],), 6.0))
    assert torch.equal(logits(hf, a, const), logits(hf, a, cv.clamp("L1.3", 6.0)))


def test_patch_values_are_positions_and_rows(tiny):
    hf, tok, a, b = tiny
    mlp_a, _, base_a = cached(hf, a, 1)
    mlp_b, _, base_b = cached(hf, b, 1)
    both = torch.cat([a, b])
    per_row = cv.patch("L1.3", torch.stack([mlp_a[0, :, 3], mlp_b[0, :, 3]]))
    out = logits(hf, both, per_row)
    assert torch.allclose(out[0], base_a[0], atol=1e-5) and torch.allclose(
        out[1], base_b[0], atol=1e-5
    )
    # values shorter than the sequence patch its first positions only
    first = cv.patch("L1.3", torch.full((2,), 9.0))
    got = logits(hf, a, first)
    assert torch.allclose(got[0, :2], logits(hf, a[:, :2], cv.clamp("L1.3", 9.0))[0], atol=1e-5)
    with pytest.raises(BadInterventionError, match="2 rows but the batch it ran on has 1"):
        logits(hf, a, per_row)
    with pytest.raises(BadInterventionError, match="this model's MLP has 64"):
        logits(hf, a, patch_mlp(1, torch.zeros(a.shape[1], 32)))
    with pytest.raises(BadInterventionError, match="NaN or infinite"):
        cv.patch("L1.3", torch.tensor([1.0, float("nan")]))
    with pytest.raises(BadInterventionError, match="carries its own values"):
        edit = cv.patch("L1.3", torch.ones(2))
        cv.measure_effect(hf, "The dog", edit, [" dog"], controls=2, tokenizer=tok)
    assert _hooks(hf) == 0


def test_patches_restore_like_every_edit(tiny):
    hf, _, a, b = tiny
    mlp_b, resid_b, _ = cached(hf, b, 1)
    _, _, base = cached(hf, a, 1)
    outer = intervene(hf, patch_resid(1, resid_b[0]))
    inner = intervene(hf, [cv.patch("L1.3", mlp_b[0, :, 3]), cv.noise("L2.5", 0.5)])
    outer.__enter__()
    inner.__enter__()
    with torch.no_grad():
        hf(input_ids=a)
    outer.__exit__(None, None, None)  # out of order: the outer block ends first
    assert outer.fired == {"model.layers.1": 1}
    inner.__exit__(None, None, None)
    assert inner.fired == {"model.layers.1.mlp.down_proj": 1}
    assert _hooks(hf) == 0 and torch.equal(cached(hf, a, 1)[2], base)
    with pytest.raises(RuntimeError), ExitStack() as stack:
        stack.enter_context(intervene(hf, cv.patch("L1.3", mlp_b[0, :, 3])))
        raise RuntimeError("boom")
    assert _hooks(hf) == 0 and torch.equal(cached(hf, a, 1)[2], base)


@pytest.mark.skipif(not HAS_BOTH, reason="needs transformer-lens and nnsight")
def test_every_backend_patches_alike(tiny):
    from .test_interventions_backends import wrap

    hf, tok, a, b = tiny
    mlp_a, resid_a, _ = cached(hf, a, 1)
    mlp_b, resid_b, logits_b = cached(hf, b, 1)
    models = wrap(hf, tok)
    for backend, m in models.items():
        own = logits(m, a)
        for edit in (
            cv.patch("L1.3", mlp_a[0, :, 3]),
            patch_mlp(1, mlp_a),
            patch_resid(1, resid_a),
        ):
            assert torch.allclose(logits(m, a, edit), own, atol=1e-5), (backend, edit)
        other = logits(m, a, patch_resid(1, resid_b))
        assert torch.allclose(other, logits_b, atol=1e-5), backend
        moved = logits(m, a, patch_mlp(1, mlp_b))
        assert torch.allclose(moved, logits(hf, a, patch_mlp(1, mlp_b)), atol=1e-5), backend
        assert not torch.allclose(moved, own, atol=1e-4), backend
    # generation: the prompt's positions are patched, the generated ones run free
    edit = cv.patch("L1.3", mlp_b[0, :, 3] * 4)
    gens = {backend: generate(m, a, edit, max_new_tokens=3) for backend, m in models.items()}
    assert torch.equal(gens["transformer_lens"], gens["hf"]) and torch.equal(
        gens["nnsight"], gens["hf"]
    ), gens
