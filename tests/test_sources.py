"""Opening models from each source: alias, hub id (offline cache), folder, GGUF, live objects."""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import sys

import pytest
import torch

import conceptvec
from conceptvec.errors import ModelNotFoundError
from conceptvec.models import ALIASES, find_alias

from .conftest import build_tiny
from .tiny_gguf import write_tiny_gguf

COMMIT = "0123456789abcdef0123456789abcdef01234567"

RESEARCH_ALIASES = [
    "smollm2-135m",
    "gemma-3-270m",
    "llama-3.1-8b",
    "llama-3.1-8b-instruct",
    "llama-2-7b-chat",
    "olmo-7b",
    "gemma-2-2b",
    "qwen2.5-7b",
    "mistral-7b",
    "gpt2",
]


def test_aliases_exist_and_are_case_insensitive():
    for name in RESEARCH_ALIASES:
        assert name in ALIASES
    assert find_alias("Llama-3.1-8B").target == "meta-llama/Llama-3.1-8B"
    assert find_alias("nope") is None


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_dir):
    """An offline HF hub cache holding the tiny GPT-2 as openai-community/gpt2."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    repo = cache / "models--openai-community--gpt2"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(tiny_dir("gpt2"), snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_from_offline_cache(hf_cache, capsys):
    m = conceptvec.load("openai-community/gpt2")
    assert m.source == "hub" and m.revision == COMMIT
    assert m.spec.family == "gpt2" and m.dims.n_layers == 3
    assert conceptvec.decode(m, "L0.0", k=3).top_tokens  # tokenizer came from the cache too


def test_alias_resolves_through_hub_cache_and_says_so(hf_cache, caplog):
    with caplog.at_level(logging.INFO, logger="conceptvec"):
        m = conceptvec.load("gpt2")
    assert m.source == "alias" and m.name == "gpt2"
    assert "gpt2 -> openai-community/gpt2" in caplog.text


def test_uncached_hub_id_offline_is_a_clear_error(hf_cache):
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        conceptvec.load("some-org/not-cached")


@pytest.fixture(scope="module")
def tiny_pair():
    return build_tiny("llama")


@pytest.fixture(scope="module")
def gguf_file(tiny_pair, tmp_path_factory):
    hf, tok = tiny_pair
    return write_tiny_gguf(hf, tok, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_gguf_streams_dequantized_weights(gguf_file, tiny_pair):
    hf, tok = tiny_pair
    m = conceptvec.load(gguf_file, quiet=True)
    assert m.source == "gguf" and m.reader.kind == "gguf"
    assert m.summary()["weights_dtype"] == "Q8_0"
    for matrix, module in [("down", "down_proj"), ("up", "up_proj"), ("gate", "gate_proj")]:
        weight = getattr(hf.model.layers[2].mlp, module).weight.detach()
        expected = weight.T if matrix == "down" else weight
        torch.testing.assert_close(m.neurons(2, matrix), expected, atol=2e-3, rtol=0)
    # the GGUF's own tokenizer gives the same token text as the original tokenizer
    d_gguf = conceptvec.decode(m, "L1.5", k=5)
    d_live = conceptvec.decode(conceptvec.load(hf, tokenizer=tok), "L1.5", k=5)
    assert d_gguf.top_tokens[:2] == d_live.top_tokens[:2]


def test_gguf_builds_torch_model_once_and_caches_it(gguf_file, tiny_pair, tmp_path):
    hf, _ = tiny_pair
    m = conceptvec.load(gguf_file, quiet=True)
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        got = m.hf(ids).logits
        want = hf(ids).logits
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)
    from conceptvec.models.gguf_cache import cache_dir_for

    cached = cache_dir_for(gguf_file) / "model"
    assert (cached / "model.safetensors").exists()
    again = conceptvec.load(gguf_file, quiet=True)
    assert type(again.hf).__name__ == "LlamaForCausalLM"


def test_reloading_a_models_torch_module_keeps_its_tokenizer(gguf_file, tiny_pair):
    """``load(load(x).hf)`` used to lose the tokenizer: tokens then showed as ids."""
    hf, tok = tiny_pair
    again = conceptvec.load(conceptvec.load(hf, tokenizer=tok).hf)
    assert again.tokenizer is tok
    from_gguf = conceptvec.load(conceptvec.load(gguf_file, quiet=True).hf)
    assert from_gguf.tokenizer is not None  # the GGUF's tokenizer, not a failed hub lookup
    d = conceptvec.decode(from_gguf, "L1.3", k=3)
    assert d.top_tokens == conceptvec.decode(gguf_file, "L1.3", k=3).top_tokens
    assert not all(t.isdigit() for t in d.top_tokens)


def test_folder_with_one_gguf_and_config_path(gguf_file, tiny_dir, tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    shutil.copy(gguf_file, folder / "model.gguf")
    assert conceptvec.load(folder, quiet=True).reader.kind == "gguf"
    assert conceptvec.load(tiny_dir("olmo") / "config.json").spec.family == "olmo"


def test_transformer_lens_bridge(tiny_pair):
    pytest.importorskip("transformer_lens")
    try:
        from transformer_lens import TransformerBridge
    except ImportError:
        pytest.skip("this transformer_lens has no TransformerBridge at the top level")

    hf, tok = tiny_pair
    bridge = TransformerBridge.boot_transformers(
        "meta-llama/Llama-3.2-1B", hf_model=copy.deepcopy(hf), tokenizer=tok
    )
    m = conceptvec.load(bridge)
    ref = conceptvec.decode(conceptvec.load(hf, tokenizer=tok), ["L0.3", "L2.9"], k=5)
    assert [d.top_tokens for d in conceptvec.decode(m, ["L0.3", "L2.9"], k=5)] == [
        d.top_tokens for d in ref
    ]


def test_nnsight_language_model(tiny_pair):
    pytest.importorskip("nnsight")
    import warnings

    from nnsight import LanguageModel

    hf, tok = tiny_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = LanguageModel(hf, tokenizer=tok)
    m = conceptvec.load(wrapped)
    ref = conceptvec.decode(conceptvec.load(hf, tokenizer=tok), "L1.1", matrix="up", k=5)
    assert conceptvec.decode(m, "L1.1", matrix="up", k=5).top_tokens == ref.top_tokens


def test_unknown_object_is_refused():
    with pytest.raises(ModelNotFoundError, match="cannot use a int"):
        conceptvec.load(42)


def test_import_does_not_pull_optional_frameworks():
    code = (
        "import sys, conceptvec, conceptvec.cli; "
        "bad = [m for m in ('transformer_lens', 'nnsight', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lean_gguf_index_matches_gguf_reader(gguf_file):
    import gguf
    import numpy as np

    from conceptvec.models.gguf_file import GGUFFile

    ours, theirs = GGUFFile(gguf_file), gguf.GGUFReader(str(gguf_file))
    assert set(ours.tensors) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(ours.dequantize(t.name).ravel(), expected.ravel())
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            value = field.contents()
            assert (
                ours.field(key) == pytest.approx(value)
                if isinstance(value, float)
                else ours.field(key) == value
            )
