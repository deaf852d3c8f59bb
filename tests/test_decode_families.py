"""Decoding checked against each family's own modules, on tiny random models.

The reference never re-types the recipe: it pushes a neuron through the model's own
``down_proj`` (or reads the module's weight for up/gate), its post-MLP norm where the family
has one, its final norm module and its LM head module.
"""

from __future__ import annotations

import pytest
import torch

import conceptvec
from conceptvec.decoding import final_logits, residual_vectors

from .conftest import FAMILIES, build_tiny

FAMILY_NAMES = list(FAMILIES)


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _layer(hf, spec, layer):
    return _get(hf, spec.layers_module)[layer]


def _written_by_model(hf, spec, layer: int, index: int) -> torch.Tensor:
    """What neuron ``index`` adds to the residual stream at activation 1, per the modules."""
    block = _layer(hf, spec, layer)
    down = _get(block, spec.down_module)
    d_mlp = hf.config.intermediate_size if spec.family != "gpt2" else 4 * hf.config.n_embd
    one = torch.zeros(d_mlp)
    one[index] = 1.0
    out = down(one) - down(torch.zeros(d_mlp))  # drop GPT-2's c_proj bias
    post = getattr(block, "post_feedforward_layernorm", None)
    return post(out) if post is not None else out


def _head_logits(hf, spec, residual: torch.Tensor, drop_bias: bool = False) -> torch.Tensor:
    """The model's own final norm and LM head applied to a residual vector.

    ``drop_bias`` removes the constant ``W_U @ b`` of a LayerNorm's bias (GPT-2), which is
    the same for every neuron and so is not part of what decoding ranks.
    """
    norm = _get(hf, spec.final_norm_module)
    logits = hf.lm_head(norm(residual))
    if drop_bias and getattr(norm, "bias", None) is not None:
        logits = logits - hf.lm_head(norm.bias)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def _assert_proportional(ours: torch.Tensor, ref: torch.Tensor):
    scale = (ours @ ref) / (ours @ ours)
    assert scale > 0
    torch.testing.assert_close(ref, scale * ours, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(family):
        if family not in cache:
            hf, tok = build_tiny(family)
            cache[family] = (hf, conceptvec.load(hf, tokenizer=tok))
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_down_decoding_matches_model_modules(family, models):
    hf, m = models(family)
    spec = m.spec
    layer, index = 1, 7
    written = _written_by_model(hf, spec, layer, index).detach()
    ref = _head_logits(hf, spec, written, drop_bias=True).detach()
    d = conceptvec.decode(m, f"L{layer}.{index}", matrix="down", k=10)
    assert [t.id for t in d.top] == ref.topk(10).indices.tolist()
    assert [t.id for t in d.bottom] == ref.topk(10, largest=False).indices.tolist()
    ours = conceptvec.project(m, residual_vectors(m, layer, "down")[index : index + 1])[0]
    _assert_proportional(ours, ref)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_probabilities_match_model_head(family, models):
    hf, m = models(family)
    written = _written_by_model(hf, m.spec, 2, 3).detach()
    expected = torch.softmax(_head_logits(hf, m.spec, written), -1).detach()
    torch.testing.assert_close(final_logits(m, written[None]).softmax(-1)[0], expected)
    # decode's probabilities treat the neuron's residual-space vector as the final residual
    vector = residual_vectors(m, 2, "down")[3]
    expected = torch.softmax(_head_logits(hf, m.spec, vector), -1).detach()
    d = conceptvec.decode(m, "L2.3", k=5, probs=True)
    for t in d.top:
        assert t.prob == pytest.approx(float(expected[t.id]), rel=1e-4, abs=1e-7)


def _mlp_hidden(hf, spec, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The hidden activation the model's own MLP computes for inputs ``x``: the input of its
    down projection."""
    block = _layer(hf, spec, layer)
    seen = {}
    handle = _get(block, spec.down_module).register_forward_pre_hook(
        lambda _m, args: seen.update(h=args[0].detach())
    )
    try:
        with torch.no_grad():
            block.mlp(x)
    finally:
        handle.remove()
    return seen["h"]


def _activation(hf):
    from transformers.activations import ACT2FN

    c = hf.config
    name = getattr(c, "hidden_activation", None) or getattr(c, "hidden_act", None)
    return ACT2FN[name or c.activation_function]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_input_rows_reproduce_the_models_mlp_activation(family, models):
    """The up (and gate) rows we read give the MLP activation the model computes:
    ``act(gate x) * (up x)``, or ``act(up x + b)`` without a gate (whatever the family's
    layout: Phi-3's fused gate_up_proj, GPT-2's Conv1D, GPT-NeoX's dense_h_to_4h)."""
    hf, m = models(family)
    x = torch.randn(5, m.dims.d_model)
    act = _activation(hf)
    for layer in range(m.dims.n_layers):
        up = x @ m.neurons(layer, "up").float().T
        if m.spec.gated:
            ours = act(x @ m.neurons(layer, "gate").float().T) * up
        else:
            bias = hf.state_dict()[m.weight_key("up", layer).replace(".weight", ".bias")]
            ours = act(up + bias)
        torch.testing.assert_close(ours, _mlp_hidden(hf, m.spec, layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("matrix", ["up", "gate"])
def test_input_side_rows_decode_through_the_head(family, matrix, models):
    hf, m = models(family)
    if not m.spec.gated and matrix == "gate":
        with pytest.raises(conceptvec.ConceptvecError, match="not gated"):
            conceptvec.decode(m, "L0.1", matrix="gate")
        return
    row = m.neuron_vector("L0.5", matrix).float()  # checked against the forward pass above
    ref = _head_logits(hf, m.spec, row.detach(), drop_bias=True)
    d = conceptvec.decode(m, "L0.5", matrix=matrix, k=8)
    assert [t.id for t in d.top] == ref.topk(8).indices.tolist()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_folder_and_live_model_agree(family, tiny_dir, models):
    folder = tiny_dir(family)
    from_disk = conceptvec.load(folder)
    assert from_disk.source == "folder"
    live = conceptvec.load(from_disk.hf, tokenizer=from_disk.tokenizer)
    a = conceptvec.decode(from_disk, ["L1.2", "L0.9"], matrix="down", k=6)
    b = conceptvec.decode(live, ["L1.2", "L0.9"], matrix="down", k=6)
    assert [x.top_tokens for x in a] == [x.top_tokens for x in b]
    assert all(t.token and not t.token.startswith("<id") for t in a[0].top)
    s = from_disk.summary()
    d_mlp = 4 * 32 if family == "gpt2" else 64  # GPT-2's n_inner defaults to 4 * d_model
    assert (s["layers"], s["d_model"], s["d_mlp"]) == (3, 32, d_mlp)
    assert s["family"] == m_family(family)


def m_family(label: str) -> str:
    return {"mistral": "llama", "qwen2": "llama", "gemma2": "gemma", "gemma3": "gemma"}.get(
        label, label
    )


def test_fold_norm_changes_result_and_is_recorded(models):
    _, m = models("gemma3")
    folded = conceptvec.decode(m, "L1.4", k=5)
    raw = conceptvec.decode(m, "L1.4", k=5, fold_norm=False)
    assert folded.recipe["fold_norm"] is True and raw.recipe["fold_norm"] is False
    assert "final_norm_gain(1+w)" in folded.recipe["steps"]
    assert "post_mlp_norm_gain" in folded.recipe["steps"]
    assert [t.score for t in folded.top] != [t.score for t in raw.top]


def test_vector_input_and_batch(models):
    _, m = models("llama")
    v = m.neuron_vector("L2.11", "down")
    by_vector = conceptvec.decode(m, v, k=4)
    by_id = conceptvec.decode(m, "L2.11", k=4)
    assert by_vector.neuron is None and by_vector.top_tokens == by_id.top_tokens
    batch = conceptvec.decode(m, torch.stack([v, -v]), k=4)
    assert batch[1].top_tokens == by_id.bottom_tokens
    with pytest.raises(ValueError, match="d_model=32"):
        conceptvec.decode(m, torch.zeros(7))


def test_decoding_renders_and_serialises(models):
    _, m = models("llama")
    d = conceptvec.decode(m, conceptvec.NeuronId(1, 1), k=3, probs=True)
    text = str(d)
    assert "L1.1 (down)" in text and "final norm folded" in text
    data = d.to_dict()
    assert data["neuron"] == "L1.1" and len(data["top"]) == 3 and "prob" in data["top"][0]
    assert "<table>" in d._repr_html_()


def test_bf16_head_is_projected_in_float32_chunks():
    hf, tok = build_tiny("llama")
    m = conceptvec.load(hf.to(torch.bfloat16), tokenizer=tok)
    vectors = residual_vectors(m, 1, "down")[:4]
    whole = vectors @ (m.unembedding().float() * m.final_norm_gain()).T
    chunked = conceptvec.project(m, vectors, chunk=50)  # vocab 394 -> 8 chunks
    assert chunked.dtype == torch.float32 and chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert m.summary()["weights_dtype"] == "bfloat16"


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "olmo"])
def test_one_norm_fold_serves_vectors_and_head_rows(family, models):
    """``project`` folds the final norm into vectors, atlases into the head's rows: the same
    NormFold, so both give the same scores."""
    from conceptvec.atlas.head import folded_rows
    from conceptvec.decoding import NormFold, project

    _, m = models(family)
    v = torch.randn(4, m.dims.d_model)
    fold = NormFold.of(m)
    assert fold.center == (family in ("gpt2", "olmo"))
    rows = folded_rows(m, slice(None))
    torch.testing.assert_close(v @ rows.T, project(m, v), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v @ fold.rows(m.unembedding()).T, project(m, v))
