"""TransformerLens' classic ``HookedTransformer`` (TransformerLens 2.x and 3.x) as a source.

Each tiny HF model is turned into a HookedTransformer offline with TransformerLens' own
weight conversion (``convert_*_weights``) and its own processing (``process_weights_``:
``fold_ln``, ``center_writing_weights``, ``center_unembed``), as ``from_pretrained`` does.
Decoding the HookedTransformer must give the tokens that decoding the HF model gives.

The tests that need ``HookedTransformer`` skip where TransformerLens lacks it
(TransformerLens 4 has only ``TransformerBridge``). ``.ci/run`` runs them a second time in a
venv with TransformerLens 3, where ``CONCEPTVEC_REQUIRE_HOOKED_TRANSFORMER=1`` turns that skip
into a failure.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import SimpleNamespace

import pytest
import torch

import conceptvec
from conceptvec.decoding import final_logits, project, residual_vectors
from conceptvec.errors import NoWeightsError, UnsupportedArchitectureError
from conceptvec.models.backends import is_hooked_transformer

from .conftest import build_tiny

FAMILIES = ["llama", "mistral", "qwen2", "gpt2", "gemma", "gemma2", "gemma3", "olmo", "olmo2"]
ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
}
CONVERTERS = {
    "llama": "convert_llama_weights",
    "mistral": "convert_mistral_weights",
    "qwen2": "convert_qwen2_weights",
    "gpt2": "convert_gpt2_weights",
    "gemma": "convert_gemma_weights",
    "gemma2": "convert_gemma_weights",
    "gemma3": "convert_gemma_weights",
    "olmo": "convert_olmo_weights",  # TransformerLens 3+
    "olmo2": "convert_olmo2_weights",  # TransformerLens 3+
}
POST_NORM = ["olmo2"]  # TransformerLens cannot fold these (the MLP's norm is on its output)
PROCESSING = {
    "none": {},
    "fold_ln": dict(fold_ln=True),
    "center_unembed": dict(center_unembed=True),
    "from_pretrained": dict(fold_ln=True, center_writing_weights=True, center_unembed=True),
}
UNFOLDED = ["none", "center_unembed"]
NEURONS = ["L0.3", "L1.7", "L2.20", "L2.63"]

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def tl():
    """The transformer_lens module, or a skip where it has no HookedTransformer."""
    required = bool(os.environ.get("CONCEPTVEC_REQUIRE_HOOKED_TRANSFORMER"))
    lens = importlib.import_module("transformer_lens") if required else None
    lens = lens or pytest.importorskip("transformer_lens")
    try:
        lens.HookedTransformer  # noqa: B018 - TransformerLens 4 raises ImportError here
    except (AttributeError, ImportError):
        why = "this transformer_lens has no HookedTransformer (TransformerLens 4+)"
        if required:
            pytest.fail(why)
        pytest.skip(why)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # TransformerLens warns about every centring it skips
    yield lens
    root.setLevel(level)


def _tl_config(tl, family: str, hf):
    """The HookedTransformerConfig that TransformerLens' loader would make for ``hf``."""
    c = hf.config
    if family == "gpt2":
        d = dict(
            d_model=c.n_embd,
            d_head=c.n_embd // c.n_head,
            n_heads=c.n_head,
            d_mlp=4 * c.n_embd,
            n_layers=c.n_layer,
            n_ctx=c.n_positions,
            eps=c.layer_norm_epsilon,
            act_fn=c.activation_function,
            normalization_type="LN",
        )
    else:
        d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        d = dict(
            d_model=c.hidden_size,
            d_head=d_head,
            n_heads=c.num_attention_heads,
            n_key_value_heads=(  # TransformerLens' GQA only when there are fewer K/V heads
                c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None
            ),
            d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers,
            n_ctx=64,
            eps=getattr(c, "rms_norm_eps", None) or 1e-5,  # OLMo 1: parameter-free LayerNorm
            act_fn=getattr(c, "hidden_activation", None) or c.hidden_act,
            normalization_type="LN" if family == "olmo" else "RMS",
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            rotary_adjacent_pairs=False,
            final_rms=family != "olmo",
            gated_mlp=True,
        )
        if family.startswith("gemma"):
            d.update(attn_scale=float(getattr(c, "query_pre_attn_scalar", d_head)) ** 0.5)
        if family in ("gemma2", "gemma3"):
            d.update(use_normalization_before_and_after=True)
        if family == "gemma2":
            d.update(output_logits_soft_cap=c.final_logit_softcapping)
        if family == "gemma3":
            d.update(use_qk_norm=True)
    return tl.HookedTransformerConfig(
        **d, d_vocab=c.vocab_size, original_architecture=ARCH[family], dtype=torch.float32
    )


def _convert(family: str, hf, cfg):
    from transformer_lens.pretrained import weight_conversions

    convert = getattr(weight_conversions, CONVERTERS[family], None)
    if convert is None:
        pytest.skip(f"this TransformerLens cannot convert {ARCH[family]}")
    return convert(hf, cfg)


@pytest.fixture(scope="module")
def pairs(tl, tmp_path_factory):
    """family -> (HF model, tokenizer, conceptvec Model of the HF model)."""
    cache = {}

    def get(family):
        if family not in cache:
            hf, tok = build_tiny(family)
            folder = tmp_path_factory.mktemp(f"tok-{family}")
            tok.save_pretrained(folder)  # TransformerLens re-opens its tokenizer by path
            cache[family] = (hf, folder, conceptvec.load(hf, tokenizer=tok))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def hooked(tl, pairs):
    """(family, processing) -> a HookedTransformer of the family's tiny HF model."""
    from transformers import AutoTokenizer

    cache = {}

    def get(family, processing="none"):
        if (family, processing) not in cache:
            hf, folder, _ = pairs(family)
            cfg = _tl_config(tl, family, hf)
            model = tl.HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(folder))
            with torch.no_grad():
                state = {k: v.detach().clone() for k, v in _convert(family, hf, cfg).items()}
            model.load_and_process_state_dict(
                state,
                fold_ln=False,
                center_writing_weights=False,
                center_unembed=False,
                fold_value_biases=False,
            )
            flags = PROCESSING[processing]
            if family in POST_NORM and flags.get("fold_ln"):
                pytest.skip(f"TransformerLens does not fold {ARCH[family]} (post-norm)")
            if flags:
                model.process_weights_(
                    fold_ln=flags.get("fold_ln", False),
                    center_writing_weights=flags.get("center_writing_weights", False),
                    center_unembed=flags.get("center_unembed", False),
                )
            cache[family, processing] = model.eval()
        return cache[family, processing]

    return get


# ------------------------------------------------------------------- the helper itself
@pytest.mark.parametrize("family", FAMILIES)
def test_the_hooked_transformer_is_the_hf_model(family, pairs, hooked):
    """The HookedTransformers below compute what their HF models compute."""
    hf, _, _ = pairs(family)
    ids = torch.tensor([[3, 17, 42, 7, 11]])
    with torch.no_grad():
        want = torch.log_softmax(hf(ids).logits, -1)
        for processing in PROCESSING:
            if family in POST_NORM and "fold_ln" in PROCESSING[processing]:
                continue
            got = torch.log_softmax(hooked(family, processing)(ids), -1)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("processing", list(PROCESSING))
@pytest.mark.parametrize("family", FAMILIES)
def test_down_tokens_match_the_hf_model(family, processing, pairs, hooked):
    _, _, ref = pairs(family)
    m = conceptvec.load(hooked(family, processing))
    assert m.spec is ref.spec and m.reader.kind == "hooked_transformer"
    assert m.reader.ln_folded == ("fold_ln" in PROCESSING[processing])
    for got, want in zip(
        conceptvec.decode(m, NEURONS, k=10), conceptvec.decode(ref, NEURONS, k=10)
    ):
        assert got.top_tokens == want.top_tokens
        assert got.bottom_tokens == want.bottom_tokens
    # every token's score, up to the constant that centring W_U subtracts
    for layer in range(ref.dims.n_layers):
        v, w = residual_vectors(ref, layer, "down"), residual_vectors(m, layer, "down")
        if ref.spec.norm_style.startswith("layernorm"):  # center_writing_weights centres W_out
            v, w = v - v.mean(-1, keepdim=True), w - w.mean(-1, keepdim=True)
        torch.testing.assert_close(w, v, atol=1e-5, rtol=0)
        got, want = project(m, v), project(ref, v)
        torch.testing.assert_close(
            got - got.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True), atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("processing", UNFOLDED)
@pytest.mark.parametrize("family", FAMILIES)
def test_up_and_gate_tokens_match_when_not_folded(family, processing, pairs, hooked):
    _, _, ref = pairs(family)
    m = conceptvec.load(hooked(family, processing))
    for matrix in ref.spec.matrices:
        got = conceptvec.decode(m, NEURONS, matrix=matrix, k=10)
        want = conceptvec.decode(ref, NEURONS, matrix=matrix, k=10)
        assert [d.top_tokens for d in got] == [d.top_tokens for d in want], matrix
        assert [d.bottom_tokens for d in got] == [d.bottom_tokens for d in want], matrix


@pytest.mark.parametrize("family", FAMILIES)
def test_folded_up_and_gate_carry_the_pre_mlp_norm_gain(family, pairs, hooked):
    """fold_ln multiplies the pre-MLP norm gain into W_in/W_gate; that cannot be undone, so a
    folded model's up/gate neuron is the HF row times that gain."""
    _, _, ref = pairs(family)
    m = conceptvec.load(hooked(family, "from_pretrained"))
    unfolded = hooked(family, "none")
    for matrix in ref.spec.matrices[:-1]:
        for neuron in NEURONS:
            layer, index = (int(x) for x in neuron[1:].split("."))
            gain = unfolded.blocks[layer].ln2.w.detach()  # TL's effective gain (1 + w for Gemma)
            vector = gain * ref.neurons(layer, matrix)[index].float()
            got = conceptvec.decode(m, neuron, matrix=matrix, k=10)
            want = conceptvec.decode(ref, vector, k=10)
            assert got.top_tokens == want.top_tokens and got.bottom_tokens == want.bottom_tokens


@pytest.mark.parametrize("processing", list(PROCESSING))
@pytest.mark.parametrize("family", FAMILIES)
def test_probabilities_match_the_hf_model(family, processing, pairs, hooked):
    _, _, ref = pairs(family)
    m = conceptvec.load(hooked(family, processing))
    got = conceptvec.decode(m, NEURONS, k=5, probs=True)
    want = conceptvec.decode(ref, NEURONS, k=5, probs=True)
    for g, w in zip(got, want):
        assert g.top_tokens == w.top_tokens
        torch.testing.assert_close(
            torch.tensor([t.prob for t in g.top]), torch.tensor([t.prob for t in w.top])
        )
    v = 3 * residual_vectors(ref, 1, "down")  # beyond one neuron: all of them, larger
    torch.testing.assert_close(
        torch.log_softmax(final_logits(m, v), -1),
        torch.log_softmax(final_logits(ref, v), -1),
        atol=1e-4,
        rtol=0,
    )


# ------------------------------------------------------------------ norms and metadata
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gemma_gain_gets_its_one_exactly_once(family, pairs, hooked):
    """TL stores Gemma's gains as 1 + w; the Gemma spec adds 1 to HF's w. Once, not twice."""
    hf, _, ref = pairs(family)
    raw = conceptvec.load(hooked(family, "none"))
    assert raw.spec.norm_style == "rmsnorm_1p"
    torch.testing.assert_close(raw.final_norm_gain(), 1.0 + hf.model.norm.weight.detach())
    torch.testing.assert_close(raw.final_norm_gain(), ref.final_norm_gain())
    folded = conceptvec.load(hooked(family, "from_pretrained"))
    assert folded.final_norm_gain() is None  # it is in W_U now
    for layer in range(ref.dims.n_layers):
        want = ref.mlp_out_gain(layer)  # Gemma 2/3: 1 + post_feedforward_layernorm.weight
        for m in (raw, folded):
            got = m.mlp_out_gain(layer)
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", POST_NORM)
def test_post_norm_models_carry_their_mlp_output_gain(family, pairs, hooked):
    """OLMo 2's TransformerLens ln2 is the norm on the MLP output, the spec's mlp_out_norm."""
    hf, _, ref = pairs(family)
    ht = hooked(family, "none")
    m = conceptvec.load(ht)
    for layer in range(ref.dims.n_layers):
        want = hf.model.layers[layer].post_feedforward_layernorm.weight.detach()
        torch.testing.assert_close(m.mlp_out_gain(layer), want)
    ht.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    with pytest.raises(UnsupportedArchitectureError, match="fold_ln=False"):
        conceptvec.load(ht)


def test_model_metadata_and_tokenizer(pairs, hooked):
    _, _, ref = pairs("gemma2")
    ht = hooked("gemma2", "from_pretrained")
    m = conceptvec.load(ht)
    assert m.tokenizer is ht.tokenizer  # taken from the HookedTransformer
    assert (m.dims.n_layers, m.dims.d_model, m.dims.d_mlp, m.dims.vocab) == (
        ref.dims.n_layers,
        ref.dims.d_model,
        ref.dims.d_mlp,
        ref.dims.vocab,
    )
    assert m.dims.logit_softcap == ref.dims.logit_softcap == 30.0
    summary = m.summary()
    assert summary["family"] == "gemma" and summary["source"] == "object"
    assert summary["mlp_out_norm"] is True
    with pytest.raises(NoWeightsError):
        m.hf  # noqa: B018 - no HF module behind a HookedTransformer
    gpt2 = conceptvec.load(hooked("gpt2", "none"))
    assert gpt2.spec.family == "gpt2" and gpt2.prefix == "transformer."


def test_reads_live_weights_without_copying(hooked):
    ht = hooked("llama", "fold_ln")
    m = conceptvec.load(ht)
    assert m.neurons(1, "down").data_ptr() == ht.blocks[1].mlp.W_out.data_ptr()
    assert m.unembedding().data_ptr() == ht.unembed.W_U.data_ptr()


def test_native_configs_are_read_by_structure(tl):
    """A HookedTransformer built from a bare config (no HF architecture) still decodes."""
    common = dict(d_model=16, d_head=4, n_heads=4, d_mlp=32, n_layers=2, n_ctx=8, d_vocab=50)
    gpt_like = tl.HookedTransformer(
        tl.HookedTransformerConfig(**common, act_fn="gelu", normalization_type="LN")
    )
    llama_like = tl.HookedTransformer(
        tl.HookedTransformerConfig(
            **common, act_fn="silu", normalization_type="RMS", gated_mlp=True, final_rms=True
        )
    )
    assert conceptvec.load(gpt_like).spec.family == "gpt2"
    assert conceptvec.load(llama_like).spec.family == "llama"
    d = conceptvec.decode(llama_like, "L1.5", matrix="gate", k=3)
    assert len(d.top) == 3  # no tokenizer: tokens are shown as ids
    attn_only = tl.HookedTransformer(
        tl.HookedTransformerConfig(**common, attn_only=True, normalization_type="LN")
    )
    with pytest.raises(NoWeightsError, match="attention-only"):
        conceptvec.load(attn_only)
    neox = tl.HookedTransformer(
        tl.HookedTransformerConfig(
            **common,
            act_fn="gelu",
            normalization_type="LN",
            original_architecture="GPTNeoXForCausalLM",
        )
    )
    assert conceptvec.load(neox).spec.family == "gpt_neox"  # a supported family since stop 19
    bloom = tl.HookedTransformer(
        tl.HookedTransformerConfig(
            **common,
            act_fn="gelu",
            normalization_type="LN",
            original_architecture="BloomForCausalLM",
        )
    )
    with pytest.raises(UnsupportedArchitectureError, match="BloomForCausalLM"):
        conceptvec.load(bloom)


# ------------------------------------------------------- detection (no TransformerLens)
def test_detection_is_by_class_name_and_module():
    class HookedTransformer:
        pass

    HookedTransformer.__module__ = "transformer_lens.HookedTransformer"

    class HookedSAETransformer(HookedTransformer):  # e.g. sae_lens' subclass
        pass

    HookedSAETransformer.__module__ = "sae_lens.analysis.hooked_sae_transformer"

    class Impostor:
        pass

    Impostor.__name__ = "HookedTransformer"
    assert is_hooked_transformer(HookedTransformer())
    assert is_hooked_transformer(HookedSAETransformer())
    assert not is_hooked_transformer(Impostor())
    assert not is_hooked_transformer(SimpleNamespace(cfg=None))
