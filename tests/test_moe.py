"""A mixture-of-experts family (OLMoE) on a tiny random model: neurons per expert
(``L1.E2.7``), read from a saved folder (one key per expert) and from the live model
(transformers 5 stacks every expert in one parameter), checked against the experts' own
forward pass; decoding, atlases, interventions and weight comparison per expert.
"""

from __future__ import annotations

import pytest
import torch

import conceptvec as cv
from conceptvec.errors import NeuronOutOfRangeError

from .conftest import build_tiny

N_EXPERTS = 4


@pytest.fixture(scope="module")
def olmoe():
    hf, tok = build_tiny("olmoe")
    return hf, tok, cv.load(hf, tokenizer=tok)


def _expert_output(hf, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
    """What the model's own experts module writes for inputs ``x`` routed to one expert only,
    with routing weight 1."""
    experts = hf.model.layers[layer].mlp.experts
    index = torch.full((len(x), 1), expert)
    with torch.no_grad():
        return experts(x, index, torch.ones(len(x), 1))


def test_dims_and_ids_name_the_expert(olmoe, tiny_dir):
    _, _, m = olmoe
    assert m.dims.n_experts == N_EXPERTS and m.spec.moe
    assert m.dims.to_dict()["n_experts"] == N_EXPERTS
    assert m.summary()["experts"] == N_EXPERTS
    assert m.summary()["neurons"] == 3 * 64 * N_EXPERTS
    assert str(m.dims.check("L1.E2.7")) == "L1.E2.7"
    with pytest.raises(NeuronOutOfRangeError, match=r"L1\.E<expert>\.7"):
        cv.decode(m, "L1.7")
    with pytest.raises(NeuronOutOfRangeError, match="experts 0..3"):
        cv.decode(m, "L1.E4.7")
    dense = cv.load(tiny_dir("llama"), quiet=True)
    assert "n_experts" not in dense.dims.to_dict() and "experts" not in dense.summary()
    with pytest.raises(NeuronOutOfRangeError, match="no experts"):
        cv.decode(dense, "L1.E0.7")


def test_folder_and_live_model_read_the_same_expert_rows(olmoe, tiny_dir):
    hf, _, live = olmoe
    folder = cv.load(tiny_dir("olmoe"), quiet=True)
    assert folder.dims == live.dims
    assert folder.reader.has("model.layers.1.mlp.experts.3.up_proj.weight")
    assert not live.reader.has("model.layers.1.mlp.experts.3.up_proj.weight")  # stacked
    fresh = cv.load(folder.hf)  # the folder's weights, loaded by transformers
    for expert in range(N_EXPERTS):
        for matrix in ("up", "gate", "down"):
            a = folder.neurons(1, matrix, expert=expert)
            b = fresh.neurons(1, matrix, expert=expert)
            assert torch.equal(a, b), (expert, matrix)
    assert not torch.equal(live.neurons(1, "up", expert=0), live.neurons(1, "up", expert=1))


def test_expert_rows_reproduce_the_experts_forward_pass(olmoe):
    """``act(x gate^T) * (x up^T) @ down`` from the rows we read equals what the model's
    experts module computes for tokens routed to that expert, for every expert."""
    hf, _, m = olmoe
    act = hf.model.layers[0].mlp.experts.act_fn
    x = torch.randn(6, m.dims.d_model)
    for layer in range(m.dims.n_layers):
        for expert in range(N_EXPERTS):
            gate, up, down = (
                m.neurons(layer, k, expert=expert).float() for k in ("gate", "up", "down")
            )
            ours = (act(x @ gate.T) * (x @ up.T)) @ down
            torch.testing.assert_close(
                ours, _expert_output(hf, layer, expert, x), rtol=1e-4, atol=1e-5
            )


def test_decoding_one_experts_neuron_matches_the_models_head(olmoe):
    hf, _, m = olmoe
    tops = []
    for expert in range(N_EXPERTS):
        down = m.neurons(2, "down", expert=expert).float()
        written = down[7]  # what neuron 7 writes at activation 1 (checked above)
        with torch.no_grad():
            ref = hf.lm_head(hf.model.norm(written))
        d = cv.decode(m, f"L2.E{expert}.7", k=6)
        assert d.neuron == cv.NeuronId(2, 7, expert)
        assert [t.id for t in d.top] == ref.topk(6).indices.tolist()
        assert [t.id for t in d.bottom] == ref.topk(6, largest=False).indices.tolist()
        tops.append(d.top_tokens)
    assert len({tuple(t) for t in tops}) > 1  # experts are different neurons
    both = cv.decode(m, ["L2.E1.7", "L0.E3.2"], matrix="gate", k=3)
    assert [str(d.neuron) for d in both] == ["L2.E1.7", "L0.E3.2"]


def test_map_makes_a_shard_per_expert_that_decode_agrees_with(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    import json

    from conceptvec.atlas import Atlas
    from conceptvec.atlas.export import export_parquet

    from .conftest import run_cli

    folder, out = tiny_dir("olmoe"), tmp_path / "atlas"
    code, _, err = run_cli(
        ["map", str(folder), "-o", str(out), "-q", "-k", "5"], monkeypatch, capsys
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dims"]["n_experts"] == N_EXPERTS and manifest["complete"]
    assert len(manifest["shards"]) == 3 * N_EXPERTS * 3
    entry = manifest["shards"]["L001.E002.down"]
    assert (entry["layer"], entry["expert"], entry["matrix"]) == (1, 2, "down")
    model = cv.load(folder, quiet=True)
    atlas = Atlas(out)
    for neuron in ("L1.E2.7", "L0.E0.63", "L2.E3.0"):
        for matrix in ("up", "gate", "down"):
            want = cv.decode(model, neuron, matrix=matrix, k=5)
            got = atlas.neuron(neuron, matrix)
            assert [t.id for t in got.top] == [t.id for t in want.top], (neuron, matrix)
            assert [t.id for t in got.bottom] == [t.id for t in want.bottom], (neuron, matrix)
    token = atlas.neuron("L1.E2.7", "down").top[0].token
    hits = atlas.search(token, exact=True, top=None)
    assert "L1.E2.7" in str(hits)
    assert any(str(h.neuron) == "L1.E2.7" and h.matrix == "down" for h in hits)
    assert all(h.neuron.expert is not None for h in hits)
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pq.read_table(export_parquet(atlas))
    assert table.column_names[:3] == ["layer", "expert", "index"]
    assert table.num_rows == 3 * N_EXPERTS * 3 * 64
    code, _, err = run_cli(["map", str(folder), "-o", str(out), "-k", "5"], monkeypatch, capsys)
    assert code == 0  # resumed: every shard reused


# ------------------------------------------------------------------ interventions
PROMPT = "The dog chased the cat across the garden while the bird sang"


def _reference_experts(experts, layer_expert: int, fn):
    """A hand-written copy of the experts' forward pass that edits one expert's activation
    with ``fn`` (the reference the per-expert hook must match)."""

    def forward(hidden, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden)
        f = experts.intermediate_dim
        for e in range(experts.num_experts):
            token, slot = torch.where(top_k_index == e)
            if not len(token):
                continue
            x = hidden[token]
            gate_up = x @ experts.gate_up_proj[e].T
            h = experts.act_fn(gate_up[:, :f]) * gate_up[:, f:]
            if e == layer_expert:
                h = fn(h)
            y = (h @ experts.down_proj[e].T) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y)
        return out

    return forward


def _block_outputs(hf, layer, ids, edits=()):
    """Return the MoE block's output ``[tokens, d_model]`` of ``layer`` and the experts each
    token was routed to ``[tokens, top_k]``, under ``edits``."""
    block = hf.model.layers[layer].mlp
    seen = {}

    def grab(_m, args, output):
        seen["out"] = output.reshape(-1, output.shape[-1]).detach().clone()
        seen["routed"] = block.gate(args[0].reshape(-1, args[0].shape[-1]))[2]

    handle = block.register_forward_hook(grab)
    try:
        with torch.no_grad(), cv.intervene(hf, list(edits)):
            hf(ids)
    finally:
        handle.remove()
    return seen["out"], seen["routed"]


@pytest.mark.parametrize("op", ["clamp", "zero", "scale"])
def test_an_expert_edit_equals_editing_inside_that_expert(olmoe, op, monkeypatch):
    from conceptvec.interventions import logits

    hf, tok, _ = olmoe
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    base = logits(hf, ids)
    edit, fn = {
        "clamp": (cv.clamp("L1.E2.7", 3.0), lambda h: h.index_fill(1, torch.tensor([7]), 3.0)),
        "zero": (cv.zero("L1.E2.7"), lambda h: h.index_fill(1, torch.tensor([7]), 0.0)),
        "scale": (cv.scale("L1.E2.7", -4.0), lambda h: h * _scale_column(h, 7, -4.0)),
    }[op]
    got = logits(hf, ids, edit)
    experts = hf.model.layers[1].mlp.experts
    with monkeypatch.context() as patch:
        patch.setattr(experts, "forward", _reference_experts(experts, 2, fn))
        want = logits(hf, ids)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(got, base, atol=1e-4)
    assert torch.equal(logits(hf, ids), base)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in hf.modules())


def _scale_column(h, index, factor):
    s = torch.ones(h.shape[-1])
    s[index] = factor
    return s


def test_an_expert_edit_touches_only_tokens_routed_to_that_expert(olmoe):
    hf, tok, _ = olmoe
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    before, routed = _block_outputs(hf, 0, ids)
    for expert in range(N_EXPERTS):
        after, again = _block_outputs(hf, 0, ids, [cv.clamp(f"L0.E{expert}.5", 10.0)])
        assert torch.equal(routed, again)  # layer 0's routing sees no edit
        here = (routed == expert).any(-1)
        changed = (after != before).any(-1)
        assert here.any() and not here.all(), "the prompt must route some tokens elsewhere"
        assert torch.equal(changed, here), expert


def test_positions_and_weight_edits_per_expert(olmoe):
    from conceptvec.interventions import logits

    hf, tok, m = olmoe
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    base = logits(hf, ids)
    last = logits(hf, ids, cv.clamp("L2.E1.3", 8.0, "last"))
    assert torch.equal(last[:, :-1], base[:, :-1])
    stacked = hf.model.layers[1].mlp.experts.gate_up_proj
    before = stacked.detach().clone()
    want = logits(hf, ids, cv.zero("L1.E3.9"))
    with cv.intervene(hf, [cv.zero_weights("L1.E3.9", matrix="up")]):
        changed = (stacked.detach() != before).nonzero()[:, :2].unique(dim=0).tolist()
        assert changed == [[3, 64 + 9]]  # expert 3's up half, row 9
        got = logits(hf, ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(stacked.detach(), before)
    assert not torch.equal(m.neurons(1, "up", expert=3)[9], torch.zeros(32))


def test_moe_edits_and_readings_without_an_expert_are_refused(olmoe):
    from conceptvec.activations import read_activations
    from conceptvec.errors import UnsupportedModelError
    from conceptvec.interventions import logits

    hf, tok, _ = olmoe
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with pytest.raises(NeuronOutOfRangeError, match="names no expert"):
        logits(hf, ids, cv.clamp("L1.7", 1.0))
    with pytest.raises(UnsupportedModelError, match="mixture of experts"):
        read_activations(hf, ["Harry"], ["L1.E0.3"], tokenizer=tok)


# ------------------------------------------------------------------ evaluation
def test_weight_comparison_works_per_expert(tiny_dir, tmp_path):
    """One expert's column zeroed (in the live model's stacked parameter, then saved with
    per-expert keys): the comparison finds it, names the expert and leaves the rest at 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conceptvec.evaluate import compare_weights
    from conceptvec.evaluate.concepts import EvalConcept

    folder = tiny_dir("olmoe")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        hf.model.layers[1].mlp.experts.down_proj[2, :, 7] = 0  # [experts, d_model, d_mlp]
    hf.save_pretrained(tmp_path / "unlearned")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "unlearned")
    base = cv.load(folder, quiet=True)
    unlearned = cv.load(tmp_path / "unlearned", quiet=True)
    concepts = [
        EvalConcept("zeroed", cv.NeuronId(1, 7, 2)),
        EvalConcept("other expert", cv.NeuronId(1, 7, 3)),
    ]
    w = compare_weights(base, unlearned, concepts, k=10, top_changed=3, all_jaccard=True)
    zeroed, other = w.concepts
    assert zeroed.neuron == "L1.E2.7" and zeroed.cosine == 0 and zeroed.rel_change == 1
    assert zeroed.change_pct_model > 99 and zeroed.jaccard < 1
    assert other.rel_change == 0 and other.jaccard == 1
    assert len(w.matrices) == 3 * N_EXPERTS * 3
    moved = [(m.layer, m.expert, m.matrix, m.changed) for m in w.matrices if m.changed]
    assert moved == [(1, 2, "down", 1)]
    assert w.most_changed[0].neuron == "L1.E2.7"
    assert w.jaccard_all is not None and w.jaccard_all["top"].shape == (3 * N_EXPERTS, 64)
    assert w.to_dict()["matrices"][0]["expert"] == 0
    same = compare_weights(base, cv.load(hf), [], k=10)  # the live, stacked layout
    assert [m.changed for m in same.matrices] == [m.changed for m in w.matrices]
    with pytest.raises(NeuronOutOfRangeError, match="names no expert"):
        compare_weights(base, unlearned, [EvalConcept("no expert", cv.NeuronId(1, 7))])


def test_weight_search_ranks_every_experts_neurons(olmoe):
    """Searching a token finds the expert neuron that writes it most, as a brute-force
    scoring of every expert's decoded columns does."""
    from conceptvec.atlas.search import search_weights

    _, _, m = olmoe
    target = cv.decode(m, "L2.E3.11", k=1).top[0]
    hits = search_weights(m, token_ids=[target.id], by="score", top=5)
    best = (-float("inf"), 0, 0, 0)
    for layer in range(3):
        for e in range(N_EXPERTS):
            scores = cv.project(m, m.neurons(layer, "down", expert=e).float())[:, target.id]
            i = int(scores.argmax())
            best = max(best, (float(scores[i]), layer, e, i))
    assert hits[0].neuron == cv.NeuronId(best[1], best[3], best[2])
    assert hits[0].score == pytest.approx(best[0], rel=1e-4)
    assert all(h.neuron.expert is not None for h in hits)


def test_the_quantization_attack_reaches_the_stacked_experts(olmoe):
    from conceptvec.evaluate import quantized

    hf, _, _ = olmoe
    experts = hf.model.layers[1].mlp.experts
    before = {n: p.detach().clone() for n, p in experts.named_parameters()}
    with quantized(hf, bits=4) as touched:
        for name, p in experts.named_parameters():
            assert not torch.equal(p, before[name]), name
            levels = (p[2, 5, :64] / p[2, 5, :64].abs().max() * 7).round()  # one group: 15 levels
            assert torch.allclose(p[2, 5, :64] / p[2, 5, :64].abs().max() * 7, levels, atol=1e-4)
        assert touched == 3 * (2 + 4 + 1)  # per layer: 2 stacked, q k v o, the router
    assert all(torch.equal(p, before[n]) for n, p in experts.named_parameters())


def test_expert_ids_parse_in_every_form_and_dense_ids_are_unchanged():
    from conceptvec.errors import BadNeuronIdError

    for text in ("L3.E5.123", "l3e5n123", "L3E5.123", "3:5:123", " L3.E5.123 ", (3, 123, 5)):
        assert cv.NeuronId.parse(text) == cv.NeuronId(3, 123, 5), text
    for text in ("L29.808", "L29N808", "29:808", "29.808", (29, 808)):
        n = cv.NeuronId.parse(text)
        assert (n.layer, n.index, n.expert, str(n)) == (29, 808, None, "L29.808"), text
    for bad in ("L3.E.123", "L3.E5", "E5.123", "3:5:", "L3.E5.1.2"):
        with pytest.raises(BadNeuronIdError, match="L3.E5.123"):
            cv.NeuronId.parse(bad)
    ids = [cv.NeuronId(1, 0, 2), cv.NeuronId(1, 9, 0), cv.NeuronId(0, 5, 3)]
    assert [str(n) for n in sorted(ids)] == ["L0.E3.5", "L1.E0.9", "L1.E2.0"]
    assert sorted([cv.NeuronId(2, 1), cv.NeuronId(1, 7)]) == [cv.NeuronId(1, 7), cv.NeuronId(2, 1)]
