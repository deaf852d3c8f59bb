"""What weight search keeps between calls: the same answers, new weights, broken cache files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

import conceptvec
from conceptvec.models import disk_cache
from conceptvec.models.readers import GGUFWeightReader

from .conftest import build_tiny, run_cli
from .tiny_gguf import write_tiny_gguf

SEARCHES = [dict(word="dog"), dict(word="the", side="both", top=7), dict(word="cat", by="score")]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llama")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CONCEPTVEC_CACHE", str(root))
    return root


@pytest.fixture
def gguf(tiny, tmp_path) -> Path:
    hf, tok = tiny
    return write_tiny_gguf(hf, tok, tmp_path / "tiny.gguf", quantize_head=True)


def searches(model) -> list[list[dict]]:
    """Return every search of SEARCHES on ``model``, as dicts."""
    out = []
    for kw in SEARCHES:
        kw = dict(kw)
        hits = conceptvec.search_weights(model, kw.pop("word"), **kw)
        out.append([h.to_dict() for h in hits])
    return out


def derived(cache: Path) -> list[Path]:
    return sorted((cache / "derived").glob("*/*"))


def test_cached_searches_equal_uncached_ones_on_a_gguf(gguf, cache, monkeypatch):
    cold_model = conceptvec.load(gguf, quiet=True)
    cold = searches(cold_model)
    names = {p.name for p in derived(cache)}
    assert {"unembedding.safetensors", "head-moments-folded.safetensors"} <= names
    assert {"token-texts.json", "spread-down-L002-folded.safetensors"} <= names
    assert "vectors-down-L000-folded.safetensors" in names  # dequantized once, for a GGUF
    assert searches(cold_model) == cold  # from memory

    # A new process: nothing is dequantized for the head, and the tokenizer is not needed.
    real_get = GGUFWeightReader.get

    def get(self, key):
        assert key != "lm_head.weight", "the head was dequantized again"
        return real_get(self, key)

    monkeypatch.setattr(GGUFWeightReader, "get", get)
    warm_model = conceptvec.load(gguf, quiet=True)
    assert searches(warm_model) == cold
    assert warm_model._tokenizer is None
    torch.testing.assert_close(warm_model.unembedding(), cold_model.unembedding(), rtol=0, atol=0)


def test_cached_searches_equal_uncached_ones_on_a_folder(tiny_dir, cache):
    folder = tiny_dir("qwen2")
    cold = searches(conceptvec.load(folder))
    names = {p.name for p in derived(cache)}
    assert "token-texts.json" in names and "head-moments-folded.safetensors" in names
    assert not any(n.startswith(("vectors-", "unembedding")) for n in names)  # bf16 reads fast
    assert searches(conceptvec.load(folder)) == cold


def test_a_live_module_is_never_cached(tiny, cache):
    hf, tok = tiny
    m = conceptvec.load(hf, tokenizer=tok)
    first = searches(m)
    assert not cache.exists()
    assert m.token_texts() is m.token_texts()  # texts depend on the tokenizer alone
    with torch.no_grad():  # an edit in place shows in the next search
        hf.model.layers[1].mlp.down_proj.weight.mul_(-1)
    try:
        assert searches(m) != first
    finally:
        with torch.no_grad():
            hf.model.layers[1].mlp.down_proj.weight.mul_(-1)


def test_new_weights_at_the_same_path_are_not_served_stale(tiny, gguf, cache, tmp_path):
    before = searches(conceptvec.load(gguf, quiet=True))
    mtime = os.stat(gguf).st_mtime_ns
    other, tok = build_tiny("llama", seed=1)
    write_tiny_gguf(other, tok, gguf, quantize_head=True)  # same size, same path, in place
    os.utime(gguf, ns=(mtime, mtime))  # even with the old mtime put back
    after = searches(conceptvec.load(gguf, quiet=True))
    assert after != before
    fresh = write_tiny_gguf(other, tok, tmp_path / "fresh.gguf", quantize_head=True)
    assert after == searches(conceptvec.load(fresh, quiet=True))


def test_a_file_changed_under_an_open_model_turns_its_cache_off(tiny, gguf, cache):
    m = conceptvec.load(gguf, quiet=True)
    assert disk_cache.weights_stamp(m) is not None
    other, tok = build_tiny("llama", seed=2)
    replacement = write_tiny_gguf(other, tok, gguf.with_name("new.gguf"), quantize_head=True)
    os.replace(replacement, gguf)  # m still maps the old file
    assert disk_cache.weights_stamp(m) is None
    searches(m)
    assert not derived(cache)  # nothing computed from the old file is filed under the new one


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "appended":
        path.write_bytes(data + b"\0")
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "huge header":
        path.write_bytes((1 << 62).to_bytes(8, "little") + data[8:])
    elif how == "other stamp":  # a well-formed file computed from other weights
        path.write_bytes(data.replace(b'"weights":"', b'"weights":"0'))
    elif how == "folder":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize(
    "how", ["truncated", "empty", "appended", "garbage", "huge header", "other stamp", "folder"]
)
def test_a_broken_cache_file_is_ignored_and_rebuilt(gguf, cache, how, caplog):
    want = searches(conceptvec.load(gguf, quiet=True))
    files = [p for p in derived(cache) if p.suffix in (".json", ".safetensors")]
    sizes = {p: p.stat().st_size for p in files}
    for p in files:
        _corrupt(p, how)
    with caplog.at_level(logging.WARNING, logger="conceptvec"):
        assert searches(conceptvec.load(gguf, quiet=True)) == want
    if how == "folder":  # a folder in the way: computed each time, with one warning
        assert "cannot cache" in caplog.text
        return
    assert {p: p.stat().st_size for p in files} == sizes  # rebuilt


def test_the_cli_survives_a_truncated_cache(gguf, cache, monkeypatch, capsys):
    code, want, _ = run_cli(["search", str(gguf), "dog", "--json"], monkeypatch, capsys)
    assert code == 0
    for p in derived(cache):
        p.write_bytes(p.read_bytes()[:100])
    code, out, err = run_cli(["search", str(gguf), "dog", "--json"], monkeypatch, capsys)
    assert (code, out) == (0, want)
    assert "Traceback" not in err


def test_an_unwritable_cache_costs_only_time(tiny_dir, tmp_path, monkeypatch, caplog):
    folder = tiny_dir("llama")  # a GGUF needs the cache for its config and tokenizer
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CONCEPTVEC_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger="conceptvec"):
        got = searches(conceptvec.load(folder))
    assert "cannot cache" in caplog.text
    monkeypatch.setenv("CONCEPTVEC_CACHE", str(tmp_path / "ok"))
    assert got == searches(conceptvec.load(folder))


def test_tensor_files_are_checked_when_read_back(tmp_path):
    f32 = torch.float32
    expect = {"a": ((3, 2), f32), "b": ((4,), f32)}
    tensors = {"a": torch.randn(3, 2), "b": torch.randn(4)}
    meta = {"format": "1", "what": "x", "weights": "w", "code": "c"}
    path = tmp_path / "x.safetensors"
    kind = disk_cache._TensorFile(expect)
    kind.write(str(path), tensors, meta)
    back = kind.read(path, meta)
    assert back is not None and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert kind.read(path, {**meta, "code": "d"}) is None  # other code
    assert disk_cache._TensorFile({"a": ((2, 3), f32), "b": ((4,), f32)}).read(path, meta) is None
    assert disk_cache._TensorFile({"a": ((3, 2), f32)}).read(path, meta) is None  # extra tensor
    assert kind.read(tmp_path / "missing.safetensors", meta) is None
    with pytest.raises(ValueError):  # computing the wrong shape is a bug, never cached
        kind.check({"a": torch.zeros(2, 3), "b": torch.zeros(4)})
