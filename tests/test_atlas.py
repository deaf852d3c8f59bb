"""The atlas: build equals decode for every family, resume, faults, search, diff, exports."""

from __future__ import annotations

import errno
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

import conceptvec
from conceptvec.atlas import Atlas, build
from conceptvec.atlas import store as atlas_store
from conceptvec.atlas.diff import diff_atlases
from conceptvec.atlas.export import export_neuronpedia, export_parquet
from conceptvec.atlas.search import search_weights
from conceptvec.atlas.topk import top_bottom
from conceptvec.errors import AtlasError, CorruptAtlasError

from .conftest import build_tiny


def _build(model, out, **kw):
    kw.setdefault("progress", False)
    return build.build_atlas(model, out, **kw)


def _shards(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    a = Atlas(path)
    return {atlas_store.shard_name(layer, m): s for layer, m, s in a.shards()}


# ---------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("shape,k", [((7, 1000), 5), ((3, 64 * 9), 9), ((5, 200), 4), ((4, 50), 8)])
def test_block_topk_equals_torch_topk(shape, k):
    torch.manual_seed(0)
    scores = torch.randn(shape)
    tv, ti, bv, bi = top_bottom(scores, k)
    ref_t, ref_b = scores.topk(k), scores.topk(k, largest=False)
    assert torch.equal(tv, ref_t.values) and torch.equal(ti, ref_t.indices)
    assert torch.equal(bv, ref_b.values) and torch.equal(bi, ref_b.indices)


def test_block_topk_when_the_best_values_share_one_block():
    scores = torch.zeros(2, 640)
    scores[:, 70:80] = torch.arange(10, 20, dtype=torch.float32)  # all ten best in block 1
    scores[:, 300:310] = -torch.arange(10, 20, dtype=torch.float32)
    tv, ti, bv, bi = top_bottom(scores, 8)
    assert ti[0].tolist() == list(range(79, 71, -1))
    assert bi[0].tolist() == list(range(309, 301, -1))


# ------------------------------------------------------------------ build == decode
@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "olmo", "olmo2", "gpt2", "qwen2"])
def test_atlas_matches_decode_for_every_neuron(family, tiny_dir, tmp_path):
    model = conceptvec.load(str(tiny_dir(family)), quiet=True)
    k = 5
    report = _build(model, tmp_path / "a", k=k)
    assert report.complete
    atlas = Atlas(tmp_path / "a")
    matrices = ["up", "down"] if family == "gpt2" else ["up", "gate", "down"]
    assert atlas.matrices == matrices and atlas.layers == [0, 1, 2]
    for m in matrices:
        for layer in range(3):
            s = atlas.shard(layer, m)
            ids = [f"L{layer}.{i}" for i in range(model.dims.d_mlp)]
            ref = conceptvec.decode(model, ids, matrix=m, k=k)
            want_top = torch.tensor([[t.score for t in d.top] for d in ref])
            want_bot = torch.tensor([[t.score for t in d.bottom] for d in ref])
            torch.testing.assert_close(s["top_values"], want_top, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(s["bottom_values"], want_bot, rtol=1e-4, atol=1e-4)
            ids = torch.tensor([[t.id for t in d.top] for d in ref], dtype=torch.int32)
            assert (s["top_ids"] == ids).float().mean() > 0.99  # ids differ only at exact ties
    d = atlas.neuron("L1.7", matrix="down")
    assert d.top_tokens == conceptvec.decode(model, "L1.7", k=k).top_tokens


def test_chunked_head_and_rows_give_the_same_atlas(tiny_dir, tmp_path, monkeypatch):
    model = conceptvec.load(str(tiny_dir("gemma3")), quiet=True)
    _build(model, tmp_path / "whole", k=6)
    monkeypatch.setattr("conceptvec.atlas.head.CPU_HEAD_BYTES", 0)
    monkeypatch.setattr("conceptvec.atlas.head.CPU_HEAD_CHUNK_BYTES", 50 * 32 * 4)  # 50 rows
    monkeypatch.setattr(build, "CPU_SCORE_BYTES", 7 * 191 * 4)  # 7 rows per block
    _build(model, tmp_path / "chunked", k=6)
    a, b = _shards(tmp_path / "whole"), _shards(tmp_path / "chunked")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name]["top_values"], b[name]["top_values"])
        assert torch.equal(a[name]["bottom_ids"], b[name]["bottom_ids"])


def test_manifest_records_identity_and_hashes(tiny_dir, tmp_path):
    _build(str(tiny_dir("llama")), tmp_path / "a", k=4, matrices="down", layers=[0, 2])
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["schema_version"] == atlas_store.SCHEMA_VERSION and man["complete"]
    assert man["dims"] == {"n_layers": 3, "d_model": 32, "d_mlp": 64, "vocab": 394}
    assert man["k"] == 4 and man["matrices"] == ["down"] and man["layers"] == [0, 2]
    assert "final_norm_gain" in man["recipe"]["down"]["steps"]
    assert len(man["unembedding_sha256"]) == 64 and man["model"]["weights"]
    for entry in man["shards"].values():
        path = tmp_path / "a" / entry["file"]
        assert atlas_store.sha256_file(path) == entry["sha256"]
    assert not list((tmp_path / "a").glob("journal*")) and not list((tmp_path / "a").rglob(".*tmp"))


# ----------------------------------------------------------------- resume and faults
class _Stop(KeyboardInterrupt):
    pass


def _interrupt_after(monkeypatch, n: int) -> None:
    real = build._write_shard
    calls = {"n": 0}

    def write(*args):
        if calls["n"] == n:
            raise _Stop()
        calls["n"] += 1
        real(*args)

    monkeypatch.setattr(build, "_write_shard", write)


def test_interrupted_run_resumes_to_the_same_atlas(tiny_dir, tmp_path, monkeypatch):
    folder = str(tiny_dir("llama"))
    _build(folder, tmp_path / "ref", k=5)
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            _build(folder, tmp_path / "cut", k=5)
    man = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert man["complete"] is False
    assert not Atlas(tmp_path / "cut").complete
    report = _build(folder, tmp_path / "cut", k=5)
    assert report.complete and len(report.shards_reused) == 4 and len(report.shards_written) == 5
    ref, cut = _shards(tmp_path / "ref"), _shards(tmp_path / "cut")
    assert ref.keys() == cut.keys()
    for name in ref:
        for t in atlas_store.SHARD_TENSORS:
            assert torch.equal(ref[name][t], cut[name][t]), (name, t)
    ref_man = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    cut_man = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert {k: v["sha256"] for k, v in ref_man["shards"].items()} == {
        k: v["sha256"] for k, v in cut_man["shards"].items()
    }


def test_resume_refuses_another_model_or_recipe(tiny_dir, tmp_path):
    _build(str(tiny_dir("llama")), tmp_path / "a", k=5)
    before = (tmp_path / "a" / "manifest.json").read_bytes()
    with pytest.raises(AtlasError, match="made another way.*--overwrite"):
        _build(str(tiny_dir("mistral")), tmp_path / "a", k=5)
    with pytest.raises(AtlasError, match="k differs"):
        _build(str(tiny_dir("llama")), tmp_path / "a", k=6)
    with pytest.raises(AtlasError, match="recipe differs"):
        _build(str(tiny_dir("llama")), tmp_path / "a", k=5, fold_norm=False)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == before
    report = _build(str(tiny_dir("mistral")), tmp_path / "a", k=5, overwrite=True)
    assert report.complete and Atlas(tmp_path / "a").manifest["model_name"].endswith("mistral")


def test_in_memory_model_is_never_resumed_silently(tmp_path):
    hf, tok = build_tiny("llama")
    _build(conceptvec.load(hf, tokenizer=tok, quiet=True), tmp_path / "a", k=3, matrices="up")
    with pytest.raises(AtlasError, match="in-memory"):
        _build(conceptvec.load(hf, tokenizer=tok, quiet=True), tmp_path / "a", k=3, matrices="up")


def test_corrupted_shard_is_found_and_remade(tiny_dir, tmp_path, caplog):
    folder = str(tiny_dir("olmo"))
    _build(folder, tmp_path / "a", k=5)
    good = _shards(tmp_path / "a")
    path = tmp_path / "a" / "shards" / "L001.gate.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptAtlasError, match="L001.gate.*sha256"):
        Atlas(tmp_path / "a").shard(1, "gate")
    assert Atlas(tmp_path / "a").verify() == ["L001.gate"]
    report = _build(folder, tmp_path / "a", k=5)
    assert report.shards_remade == ["L001.gate"] and report.shards_written == ["L001.gate"]
    assert "remaking" in caplog.text
    assert torch.equal(
        Atlas(tmp_path / "a").shard(1, "gate")["top_ids"], good["L001.gate"]["top_ids"]
    )


def test_unwritable_output_is_refused(tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AtlasError, match="cannot write to .*writable --out"):
        _build(str(tiny_dir("llama")), blocker / "atlas", k=3)


def test_non_atlas_folder_is_not_touched(tiny_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AtlasError, match="not empty and holds no conceptvec atlas"):
        _build(str(tiny_dir("llama")), tmp_path, k=3)
    with pytest.raises(AtlasError, match="not empty"):
        _build(str(tiny_dir("llama")), tmp_path, k=3, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_full_disk_leaves_no_partial_file(tiny_dir, tmp_path, monkeypatch):
    """A write failing with ENOSPC: clear error, no temp or half shard, and it resumes."""
    folder = str(tiny_dir("llama"))
    real = atlas_store.os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 8:  # manifest, vocab, then a few shards and journal lines
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(atlas_store.os, "fsync", fsync)
    with pytest.raises(AtlasError, match="disk is full.*resume"):
        _build(folder, tmp_path / "a", k=3)
    monkeypatch.setattr(atlas_store.os, "fsync", real)
    leftovers = [p.name for p in (tmp_path / "a").rglob(".*")]
    assert leftovers == []
    assert _build(folder, tmp_path / "a", k=3).complete


def test_real_full_disk_on_a_small_tmpfs(tiny_dir, tmp_path):
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC test covers it")
    try:
        with pytest.raises(AtlasError, match="disk is full"):
            _build(str(tiny_dir("llama")), mnt / "a", k=20)
        assert not [p for p in (mnt / "a").rglob("*") if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(mnt)])


# ---------------------------------------------------------------------- read & search
def test_search_finds_neurons_holding_a_token(tiny_dir, tmp_path):
    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    _build(model, tmp_path / "a", k=5)
    atlas = Atlas(tmp_path / "a")
    top1 = atlas.neuron("L2.10", matrix="up").top[0]
    hits = atlas.search(top1.token.strip() or top1.token, top=None)
    assert any(h.neuron == conceptvec.NeuronId(2, 10) and h.matrix == "up" for h in hits)
    assert [h.rank for h in hits] == sorted(h.rank for h in hits)
    for h in hits[:20]:  # every hit really lists the token at that rank
        d = atlas.neuron(h.neuron, h.matrix)
        assert d.top[h.rank - 1].token == h.token  # ranks count from 1
    with pytest.raises(AtlasError, match="no token"):
        atlas.search("zzzz-not-a-token")


def test_weight_search_ranks_like_full_projection(tiny_dir):
    model = conceptvec.load(str(tiny_dir("gpt2")), quiet=True)
    word = conceptvec.decode(model, "L2.5", matrix="down").top[0].token
    hits = search_weights(model, word, matrix="down", top=8)
    # brute force: project every neuron fully, z-score the token inside each projection
    from conceptvec.atlas.search import matching_tokens
    from conceptvec.decoding import project, residual_vectors

    ids = matching_tokens(model, word)
    rows = []
    for layer in range(3):
        s = project(model, residual_vectors(model, layer, "down"))
        z = (s - s.mean(1, keepdim=True)) / s.std(1, correction=0, keepdim=True)
        best = z[:, ids].max(1).values
        rows += [(float(v), layer, i) for i, v in enumerate(best)]
    rows.sort(reverse=True)
    assert [(h.neuron.layer, h.neuron.index) for h in hits] == [(r[1], r[2]) for r in rows[:8]]
    for h, r in zip(hits, rows):
        assert h.zscore == pytest.approx(r[0], rel=1e-3)
    raw = search_weights(model, word, matrix="down", top=3, by="score")
    d = conceptvec.decode(model, raw[0].neuron, matrix="down", k=400)
    assert {t.id: t.score for t in d.top}[raw[0].token_id] == pytest.approx(raw[0].score, rel=1e-4)


# -------------------------------------------------------------------------------- diff
def test_diff_finds_exactly_the_edited_neurons(tmp_path):
    hf, tok = build_tiny("llama")
    base = tmp_path / "base"
    hf.save_pretrained(base)
    tok.save_pretrained(base)
    with torch.no_grad():
        w = hf.model.layers[1].mlp.down_proj.weight
        w[:, [3, 17, 40]] = -w[:, [3, 17, 40]] * 5  # flip three concept vectors
    edited = tmp_path / "edited"
    hf.save_pretrained(edited)
    tok.save_pretrained(edited)
    _build(str(base), tmp_path / "A", k=5, matrices="down")
    _build(str(edited), tmp_path / "B", k=5, matrices="down")
    d = diff_atlases(tmp_path / "A", tmp_path / "B", top=3)
    assert sorted(c.neuron.index for c in d.changed) == [3, 17, 40]
    assert all(c.neuron.layer == 1 and c.overlap < 0.5 for c in d.changed)
    layer1 = next(r for r in d.layers if r.layer == 1)
    assert layer1.same_top1 == pytest.approx(61 / 64)
    assert d.same_top1() == pytest.approx((64 + 61 + 64) / 192)
    same = diff_atlases(tmp_path / "A", tmp_path / "A")
    assert same.same_top1() == 1.0 and same.changed == [] and same.unchanged
    assert "nothing changed: all 192 neurons" in str(same)
    assert json.loads(json.dumps(d.to_dict()))["same_top1_count"] == 189
    assert "same top-1 token: 189/192 neurons (98.44%" in str(d) and not d.unchanged
    assert "61/64" in str(d)
    assert len(d.plot().data) == 1


def test_diff_shows_counts_when_almost_every_neuron_kept_its_token():
    """2 of 9,216 neurons changed used to print as "100.0%"."""
    from conceptvec.atlas.diff import AtlasDiff, LayerDiff

    d = AtlasDiff("a", "b", k=20)
    d.layers = [
        LayerDiff(0, "down", 1.0, 1.0, 4608, same_top1_count=4608, unchanged=4608),
        LayerDiff(1, "down", 4606 / 4608, 0.999, 4608, same_top1_count=4606, unchanged=4606),
    ]
    text = str(d)
    assert "same top-1 token: 9214/9216 neurons (99.98%" in text
    assert "4606/4608" in text and "nothing changed" not in text


def test_diff_refuses_other_shapes_and_tokenizers(tiny_dir, tmp_path):
    _build(str(tiny_dir("llama")), tmp_path / "llama", k=3, matrices="down")
    _build(str(tiny_dir("gemma")), tmp_path / "gemma", k=3, matrices="down")
    with pytest.raises(AtlasError, match="different shapes"):
        diff_atlases(tmp_path / "llama", tmp_path / "gemma")
    other = tmp_path / "retok"
    shutil.copytree(tmp_path / "llama", other)
    vocab = json.loads((other / "vocab.json").read_text())
    vocab[5] = "changed"
    data = json.dumps(vocab).encode()
    (other / "vocab.json").write_bytes(data)
    man = json.loads((other / "manifest.json").read_text())
    man["vocab_sha256"] = atlas_store.sha256_bytes(data)
    (other / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(AtlasError, match="different tokenizers"):
        diff_atlases(tmp_path / "llama", other)


# ----------------------------------------------------------------------------- exports
def test_parquet_and_neuronpedia_exports(tiny_dir, tmp_path):
    import pyarrow.parquet as pq

    _build(str(tiny_dir("gemma")), tmp_path / "a", k=4)
    atlas = Atlas(tmp_path / "a")
    table = pq.read_table(export_parquet(atlas))
    assert table.column_names == [
        "layer",
        "index",
        "matrix",
        "pos_str",
        "pos_values",
        "neg_str",
        "neg_values",
    ]
    assert table.num_rows == 3 * 3 * 64
    rows = table.to_pylist()
    row = next(r for r in rows if r["layer"] == 2 and r["index"] == 9 and r["matrix"] == "gate")
    d = atlas.neuron("L2.9", "gate")
    assert row["pos_str"] == d.top_tokens and row["neg_str"] == d.bottom_tokens
    assert row["pos_values"] == pytest.approx([t.score for t in d.top])

    out = export_neuronpedia(atlas, batch_size=100)
    batches = sorted(out.glob("batch-*.jsonl.gz"))
    assert len(batches) == 6  # 576 records
    records = [json.loads(x) for b in batches for x in gzip.open(b).read().decode().splitlines()]
    assert len(records) == 576
    rec = next(r for r in records if r["layer"] == "2-mlp-gate" and r["index"] == "9")
    assert rec["pos_str"] == d.top_tokens and rec["neg_values"][0] == pytest.approx(
        d.bottom[0].score, abs=1e-4
    )
    export_neuronpedia(atlas, batch_size=1000)  # replaces the old export atomically
    assert sorted(p.name for p in out.iterdir()) == ["batch-0.jsonl.gz"]


def test_the_atlas_package_exports_what_its_docstring_lists(tiny_dir, tmp_path):
    from importlib.metadata import version

    from conceptvec.atlas import AtlasDiff, diff_atlases, search_weights  # noqa: F401

    _build(str(tiny_dir("gpt2")), tmp_path / "a", k=3, matrices="down")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["conceptvec_version"] == version("conceptvec")


def test_a_notebook_gets_what_the_map_command_does(tiny_dir, tmp_path, monkeypatch):
    """``build_atlas`` itself bounds malloc and reads ``"0-1"`` layer lists, as ``map`` does;
    searches take the same layer lists."""
    calls = []
    monkeypatch.setattr(build, "bound_malloc", lambda: calls.append(1))
    folder = tiny_dir("llama")
    _build(folder, tmp_path / "a", layers="0-1", k=5)
    assert calls == [1] and Atlas(tmp_path / "a").layers == [0, 1]
    a = Atlas(tmp_path / "a")
    word = a.neuron("L1.3", "down").top_tokens[0]
    assert a.search(word, layers="1") == a.search(word, layers=[1])
    hits = search_weights(folder, "dog", layers="1-2", top=5)
    assert hits == search_weights(folder, "dog", layers=[1, 2], top=5)
