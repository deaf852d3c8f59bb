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
