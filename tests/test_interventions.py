"""Interventions on tiny random models: each edit against a hand-written torch hook or an
equivalent edit elsewhere in the model, restoration, positions during generation, and the
errors users see.
"""

from __future__ import annotations

import pytest
import torch

import conceptvec as cv
from conceptvec.errors import (
    BadInterventionError,
    BadNeuronIdError,
    HookNeverFiredError,
    NeuronOutOfRangeError,
    UnsupportedModelError,
)
from conceptvec.interventions import generate, logits, parse_assignment
from conceptvec.interventions.controls import percentile, random_controls
from conceptvec.interventions.positions import PassTracker

from .conftest import build_tiny

FAMILIES = ["llama", "gemma3", "gpt2", "olmo2"]
PROMPT = "The dog chased the cat across the garden"


@pytest.fixture(scope="module")
def tiny():
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family)
        return cache[family]

    return get


def _ids(tok, text=PROMPT):
    return tok(text, return_tensors="pt")["input_ids"]


def _down(hf, layer):
    """The module whose input is the MLP activation, found by hand (not through the spec)."""
    if hasattr(hf, "transformer"):
        return hf.transformer.h[layer].mlp.c_proj
    return hf.model.layers[layer].mlp.down_proj


def _manual(hf, ids, layer, fn):
    """Logits with ``fn(x)`` editing the MLP activation of ``layer`` in a plain torch hook."""

    def pre(_m, args):
        x = args[0].clone()
        fn(x)
        return (x,)

    handle = _down(hf, layer).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return hf(ids).logits.float()
    finally:
        handle.remove()


def _no_hooks(hf):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in hf.modules())


# ------------------------------------------------------------ activation edits
@pytest.mark.parametrize("family", FAMILIES)
def test_activation_edits_match_a_hand_written_hook(tiny, family):
    hf, tok = tiny(family)
    ids = _ids(tok)
    base = logits(hf, ids)
    cases = [
        (cv.clamp("L1.3", 4.0), lambda x: x[..., 3].fill_(4.0)),
        (cv.scale("L1.3", -2.5), lambda x: x[..., 3].mul_(-2.5)),
        (cv.add("L1.3", 1.5), lambda x: x[..., 3].add_(1.5)),
        (cv.zero("L1.3"), lambda x: x[..., 3].zero_()),
        (cv.clamp("L1.3", 4.0, "last"), lambda x: x[..., -1, 3].fill_(4.0)),
    ]
    for edit, fn in cases:
        got = logits(hf, ids, edit)
        want = _manual(hf, ids, 1, fn)
        assert torch.allclose(got, want, atol=1e-5), str(edit)
        assert not torch.allclose(got, base, atol=1e-4), f"{edit} changed nothing"
    assert _no_hooks(hf)
    assert torch.equal(logits(hf, ids), base)


def test_several_edits_compose_across_layers(tiny):
    hf, tok = tiny("llama")
    ids = _ids(tok)
    got = logits(hf, ids, [cv.clamp("L0.1", 3.0), [cv.scale("L2.5", 0.0), cv.add("L0.2", 1.0)]])

    def layer0(_m, args):
        x = args[0].clone()
        x[..., 1] = 3.0
        x[..., 2] += 1.0
        return (x,)

    def layer2(_m, args):
        x = args[0].clone()
        x[..., 5] = 0.0
        return (x,)

    h0 = _down(hf, 0).register_forward_pre_hook(layer0)
    h2 = _down(hf, 2).register_forward_pre_hook(layer2)
    try:
        with torch.no_grad():
            want = hf(ids).logits
    finally:
        h0.remove()
        h2.remove()
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steering_equals_adding_to_a_neuron(tiny, family):
    """Adding a to neuron n adds a * down[:, n] after layer L: the same as steering by it
    (in families without a norm on the MLP output)."""
    hf, tok = tiny(family)
    ids = _ids(tok)
    column = cv.load(hf).neuron_vector("L1.7", "down").float()
    via_neuron = logits(hf, ids, cv.add("L1.7", 2.0))
    via_steer = logits(hf, ids, cv.steer(1, column, scale=2.0))
    assert torch.allclose(via_neuron, via_steer, atol=1e-5)
    last = logits(hf, ids, cv.steer(1, column, scale=2.0, positions="last"))
    base = logits(hf, ids)
    assert torch.allclose(last[:, :-1], base[:, :-1], atol=1e-6)
    assert not torch.allclose(last[:, -1], base[:, -1], atol=1e-4)


# -------------------------------------------------------------------- weights
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("matrix", ["up", "down"])
def test_weight_edits_touch_one_vector_and_restore_bit_exactly(tiny, family, matrix):
    hf, tok = tiny(family)
    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    model = cv.load(hf)
    edits = [cv.noise("L1.5", 0.5, matrix=matrix, seed=3)]
    with cv.intervene(hf, edits):
        rows = model.neurons(1, matrix).float()
        orig = cv.load(hf).neurons(1, matrix).float()  # same live weights: edited too
        assert torch.equal(rows, orig)
        changed = [k for k, v in hf.state_dict().items() if not torch.equal(v, before[k])]
        assert len(changed) == 1, changed
        key = changed[0]
        diff = (hf.state_dict()[key] - before[key]).abs()
        # Only neuron 5's row (up) or column (down), in whichever layout the family stores.
        nz = diff.nonzero()
        assert len(nz) == 32 and ((nz[:, 0] == 5).all() or (nz[:, 1] == 5).all())
        assert abs(float(diff.pow(2).sum().sqrt()) / (0.5 * 32**0.5) - 1) < 0.5
    after = hf.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_relative_noise_scales_with_the_vector_norm(tiny):
    hf, _ = tiny("llama")
    v = cv.load(hf).neuron_vector("L2.9", "down").clone().float()
    with cv.intervene(hf, cv.noise("L2.9", 0.3, relative=True, seed=1)):
        noisy = cv.load(hf).neuron_vector("L2.9", "down").float().clone()
    ratio = float((noisy - v).norm() / v.norm())
    assert 0.15 < ratio < 0.5, ratio


@pytest.mark.parametrize("matrix", ["up", "gate", "down"])
def test_zeroing_weights_equals_zeroing_the_activation(tiny, matrix):
    hf, tok = tiny("llama")
    ids = _ids(tok)
    a = logits(hf, ids, cv.zero_weights("L1.11", matrix=matrix))
    b = logits(hf, ids, cv.zero("L1.11"))
    assert torch.allclose(a, b, atol=1e-5)


def test_reversed_down_column_equals_negating_the_activation(tiny):
    hf, tok = tiny("gpt2")
    ids = _ids(tok)
    v = cv.load(hf).neuron_vector("L0.4", "down")
    a = logits(hf, ids, cv.replace_weights("L0.4", -v))
    b = logits(hf, ids, cv.scale("L0.4", -1.0))
    assert torch.allclose(a, b, atol=1e-5)


def test_everything_is_restored_after_an_exception(tiny):
    hf, tok = tiny("llama")
    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    edits = [cv.noise("L0.1", 1.0), cv.clamp("L1.2", 9.0), cv.steer(2, torch.ones(32))]
    with pytest.raises(KeyError), cv.intervene(hf, edits):
        hf(_ids(tok))
        raise KeyError("user code failed")
    assert _no_hooks(hf)
    assert all(torch.equal(hf.state_dict()[k], before[k]) for k in before)


# ----------------------------------------------------------------- firing checks
def test_a_hook_that_never_fired_raises(tiny):
    hf, tok = tiny("llama")
    with pytest.raises(HookNeverFiredError, match=r"clamp L1.3=2.*never fired"):
        with cv.intervene(hf, cv.clamp("L1.3", 2.0)):
            pass
    assert _no_hooks(hf)
    with pytest.raises(HookNeverFiredError, match=r"fired 1 time.*positions='generated'"):
        with cv.intervene(hf, cv.clamp("L1.3", 2.0, "generated")):
            hf(_ids(tok))
    with cv.intervene(hf, cv.clamp("L1.3", 2.0), check=False) as run:
        pass
    assert run.fired == {}


def test_fired_counts_each_forward_pass(tiny):
    hf, tok = tiny("llama")
    ids = _ids(tok)
    with cv.intervene(hf, [cv.clamp("L1.3", 2.0), cv.clamp("L1.4", 1.0)]) as run:
        hf(ids)
        hf(ids)
    assert run.fired == {"model.layers.1.mlp.down_proj": 2}
    with cv.intervene(hf, cv.clamp("L0.3", 2.0)) as run:
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert run.fired["model.layers.0.mlp.down_proj"] == 3


# -------------------------------------------------------------------- positions
def _gen_manual(hf, tok, ids, layer, index, value, which, use_cache=True):
    """Greedy tokens with a hand-written hook editing the prompt pass / later passes."""
    state = {"pass": 0}

    def pre(_m, args):
        x = args[0].clone()
        first = state["pass"] == 0
        state["pass"] += 1
        if which == "prompt" and first:
            x[..., index] = value
        elif which == "last" and first:
            x[..., -1, index] = value
        elif which == "generated" and not first:
            x[..., -1:, index] = value
        return (x,)

    handle = _down(hf, layer).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            out = hf.generate(
                ids,
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
                use_cache=use_cache,
            )
    finally:
        handle.remove()
    return out[:, ids.shape[1] :]


@pytest.mark.parametrize("which", ["prompt", "last", "generated", "all"])
def test_positions_during_generation(tiny, which):
    hf, tok = tiny("llama")
    ids = _ids(tok, "The dog")
    got = generate(hf, ids, cv.clamp("L2.7", 25.0, which), max_new_tokens=5)
    if which == "all":
        want = generate(hf, ids, cv.clamp("L2.7", 25.0), max_new_tokens=5)
        assert not torch.equal(got, generate(hf, ids, (), max_new_tokens=5))
    else:
        want = _gen_manual(hf, tok, ids, 2, 7, 25.0, which)
    assert torch.equal(got, want), (which, got, want)
    # Without a KV cache every pass re-reads the whole sequence; the tracker must see that
    # the prompt is still the prompt, and give the same tokens.
    with cv.intervene(hf, cv.clamp("L2.7", 25.0, which)), torch.no_grad():
        no_cache = hf.generate(
            ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id, use_cache=False
        )[:, ids.shape[1] :]
    assert torch.equal(no_cache, got), (which, no_cache, got)


def test_generated_positions_leave_the_first_token_alone(tiny):
    hf, tok = tiny("llama")
    ids = _ids(tok, "The dog")
    base = generate(hf, ids, (), max_new_tokens=4)
    gen = generate(hf, ids, cv.clamp("L2.7", 25.0, "generated"), max_new_tokens=4)
    assert gen[0, 0] == base[0, 0]


def test_pass_tracker_rules():
    t = PassTracker()
    t.begin(torch.tensor([[1, 2, 3]]), 3)
    assert t.prompt_len == 3 and t.select("prompt", 3) == slice(0, 3)
    assert t.select("generated", 3) is None and t.select("last", 3) == slice(2, 3)
    t.begin(torch.tensor([[4]]), 1, past=3)  # KV cache: one new token at position 3
    assert t.select("generated", 1) == slice(0, 1) and t.select("last", 1) is None
    t.begin(torch.tensor([[1, 2, 3, 4, 5]]), 5)  # no cache: the same sequence, grown
    assert t.prompt_len == 3 and t.select("generated", 5) == slice(3, 5)
    t.begin(torch.tensor([[7, 8]]), 2)  # a new prompt
    assert t.prompt_len == 2 and t.select("last", 2) == slice(1, 2)
    t.begin(torch.tensor([[7, 8, 9, 10]]), 4)  # grown by two tokens: not a generation step
    assert t.prompt_len == 4 and t.select("generated", 4) is None


# ---------------------------------------------------------------- mean ablation
def test_mean_ablation_clamps_to_the_mean_over_reference_texts(tiny):
    hf, tok = tiny("llama")
    texts = ["The dog chased the cat.", "Paris is the capital of France."]
    seen = []
    handle = _down(hf, 1).register_forward_pre_hook(lambda m, a: seen.append(a[0][..., 6]))
    try:
        with torch.no_grad():
            for t in texts:
                hf(_ids(tok, t))
    finally:
        handle.remove()
    mean = float(torch.cat([s.flatten() for s in seen]).mean())
    (edit,) = cv.mean_ablate(cv.load(hf, tokenizer=tok), "L1.6", texts)
    assert edit.label == "mean" and abs(edit.value - mean) < 1e-5
    assert str(edit).startswith("mean L1.6=")


# -------------------------------------------------------------------- controls
def test_random_controls_stay_in_layer_and_avoid_the_edited_neurons():
    edits = [cv.clamp("L3.5", 7.0), cv.noise("L3.6", 0.2, matrix="up"), cv.steer(2, torch.ones(8))]
    controls = random_controls(edits, d_mlp=20, n=6, seed=1)
    again = random_controls(edits, d_mlp=20, n=6, seed=1)
    assert [str(e) for c in controls for e in c] == [str(e) for c in again for e in c]
    picked = set()
    for c in controls:
        assert c[0].neuron.layer == 3 and c[0].neuron.index not in (5, 6) and c[0].value == 7.0
        assert c[1].matrix == "up" and c[1].std == 0.2 and c[1].neuron.index not in (5, 6)
        assert torch.allclose(c[2].vector.norm(), torch.ones(8).norm())
        assert not torch.allclose(c[2].vector, torch.ones(8))
        picked.add(c[0].neuron.index)
    assert len(picked) == 6
    assert percentile(5.0, [1.0, 2.0, 6.0, 5.0]) == 62.5
    assert percentile(5.0, []) is None


# ---------------------------------------------------------------- effect and sweep
def test_measure_effect_reports_probabilities_tops_and_controls(tiny):
    hf, tok = tiny("llama")
    model = cv.load(hf, tokenizer=tok)
    prompts = [PROMPT, "Paris is"]
    r = cv.measure_effect(
        model, prompts, cv.clamp("L2.7", 20.0), [" dog"], controls=4, generate=3, top_k=3
    )
    assert len(r.prompts) == 2 and r.targets == [" dog"]
    (dog,) = tok.encode(" dog", add_special_tokens=False)
    for text, p in zip([PROMPT, "Paris is"], r.prompts):
        ids = _ids(tok, text)
        before = logits(hf, ids)[0, -1].log_softmax(-1)
        after = logits(hf, ids, cv.clamp("L2.7", 20.0))[0, -1].log_softmax(-1)
        assert p.logprob_before == pytest.approx([float(before[dog])], abs=1e-5)
        assert p.logprob_after == pytest.approx([float(after[dog])], abs=1e-5)
        assert [t.id for t in p.top_after] == after.topk(3).indices.tolist()
        assert len(p.control_deltas) == 4 and p.percentile is not None
        assert isinstance(p.generation_after, str) and isinstance(p.generation_before, str)
    d = r.to_dict()
    assert d["intervention"] == ["clamp L2.7=20"] and len(d["controls"]) == 4
    fig = r.plot()
    assert type(fig).__name__ == "Figure" and len(fig.data) == 3
    assert 'p(" dog")' in str(r)


def test_dose_response_is_measured_per_value(tiny):
    hf, tok = tiny("llama")
    model = cv.load(hf, tokenizer=tok)
    dose = cv.dose_response(model, PROMPT, "L2.7", [0.0, 10.0], " dog", controls=2)
    assert dose.values == [0.0, 10.0] and len(dose.effects) == 2
    neurons = [[c[0].split("=")[0] for c in e.controls] for e in dose.effects]
    assert neurons[0] == neurons[1]  # the same control neurons at every value
    assert len(dose.probs) == 2 and len(dose.control_probs[1]) == 2
    assert dose.to_dict()["points"][1]["value"] == 10.0
    assert len(dose.plot().data) == 2
    assert "p(target)" in str(dose)


def test_dose_response_and_measure_effect_show_progress_on_request(tiny, capsys):
    hf, tok = tiny("llama")
    model = cv.load(hf, tokenizer=tok)
    cv.dose_response(model, PROMPT, "L2.7", [0.0, 10.0], " dog")
    cv.measure_effect(model, PROMPT, cv.zero("L2.7"), " dog")
    assert capsys.readouterr().err == ""  # silent by default
    cv.dose_response(model, PROMPT, "L2.7", [0.0, 10.0], " dog", progress=True)
    assert "dose response" in capsys.readouterr().err
    cv.measure_effect(model, PROMPT, cv.zero("L2.7"), " dog", progress=True)
    assert "measuring effect" in capsys.readouterr().err


def test_a_target_that_lost_its_leading_space_is_warned_about(tiny):
    import warnings

    hf, tok = tiny("llama")
    model = cv.load(hf, tokenizer=tok)
    with pytest.warns(UserWarning, match="' is' is another token"):
        cv.measure_effect(model, "The dog", cv.zero("L2.7"), "is")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cv.measure_effect(model, "The dog", cv.zero("L2.7"), " is")
        cv.measure_effect(model, "The dog ", cv.zero("L2.7"), "is")  # after a space: right
        cv.measure_effect(model, "The dog", cv.zero("L2.7"), "og")  # no " og" token: a piece


# ----------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors(tiny):
    hf, tok = tiny("llama")
    model = cv.load(hf, tokenizer=tok)
    with pytest.raises(NeuronOutOfRangeError, match="layers 0..2"):
        cv.intervene(hf, cv.clamp("L3.0", 1.0))
    with pytest.raises(NeuronOutOfRangeError, match="neurons 0..63"):
        cv.intervene(hf, cv.zero_weights("L0.64"))
    with pytest.raises(BadInterventionError, match="finite"):
        cv.clamp("L0.1", float("inf"))
    with pytest.raises(BadInterventionError, match="finite"):
        cv.noise("L0.1", float("nan"))
    with pytest.raises(BadInterventionError, match="positions"):
        cv.clamp("L0.1", 1.0, positions="first")
    with pytest.raises(BadInterventionError, match="d_model=32"):
        cv.intervene(hf, cv.steer(0, torch.ones(31)))
    with pytest.raises(BadInterventionError, match="NaN"):
        cv.steer(0, torch.tensor([1.0, float("nan")]))
    with pytest.raises(BadInterventionError, match="L<layer>.<index>=<value>"):
        parse_assignment("L1.2:3")
    with pytest.raises(BadNeuronIdError):
        parse_assignment("dog=3")
    assert parse_assignment(" L29.808 = -1.5e1 ") == (cv.NeuronId(29, 808), -15.0)
    with pytest.raises(UnsupportedModelError, match="cannot intervene on a Linear"):
        cv.intervene(torch.nn.Linear(2, 2), cv.clamp("L0.1", 1.0))
    with pytest.raises(UnsupportedModelError, match="cannot intervene on a dict"):
        cv.intervene({}, cv.clamp("L0.1", 1.0))
    with pytest.raises(BadInterventionError, match="expected an intervention"):
        cv.intervene(hf, "L0.1=3")
    with pytest.raises(BadInterventionError, match="single tokens"):
        cv.measure_effect(model, PROMPT, cv.clamp("L0.1", 1.0), targets=[" dog chased"])
    with pytest.raises(BadInterventionError, match="pass targets"):
        cv.measure_effect(model, PROMPT, cv.clamp("L0.1", 1.0), controls=3)
    with pytest.raises(BadInterventionError, match="no chat template"):
        cv.measure_effect(model, PROMPT, cv.clamp("L0.1", 1.0), chat=True)


@pytest.mark.parametrize(
    "edits",
    [
        lambda: [cv.clamp("L2.7", 20.0), cv.scale("L1.2", 3.0, "last")],
        lambda: [cv.steer(1, torch.linspace(-2, 2, 32), positions="prompt")],
        lambda: [cv.noise("L1.5", 0.5), cv.clamp("L0.3", 4.0)],
    ],
    ids=["activations", "steer", "with-weights"],
)
def test_controls_match_running_each_control_alone(tiny, edits, monkeypatch):
    """Controls run side by side in one batch (one per row); each must equal its own run."""
    import conceptvec.interventions.effect as effect

    monkeypatch.setattr(effect, "CONTROL_BATCH", 3)  # several chunks, one of them short
    hf, tok = tiny("llama")
    model = cv.load(hf, tokenizer=tok)
    r = cv.measure_effect(model, PROMPT, edits(), targets=[" dog", " cat"], controls=7, seed=5)
    ids = _ids(tok)
    targets = [tok.encode(t, add_special_tokens=False)[0] for t in (" dog", " cat")]
    before = logits(hf, ids)[0, -1].log_softmax(-1)[targets]
    want = []
    for control in random_controls(edits(), 64, 7, seed=5):
        after = logits(hf, ids, control)[0, -1].log_softmax(-1)[targets]
        want.append(float((after - before).mean()))
    assert r.prompts[0].control_deltas == pytest.approx(want, abs=1e-4)
    assert len(set(r.prompts[0].control_deltas)) == 7
