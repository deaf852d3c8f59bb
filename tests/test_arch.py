"""Architecture knowledge has one home: each family's :class:`ArchSpec`.

Every reader presents the same thing (HF names, HF layout), Gemma's ``1 + w`` gain is added
in one place whatever the source, and a family that is only an ArchSpec loads and decodes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import conceptvec
from conceptvec.models import arch
from conceptvec.models.readers import GGUFWeightReader

from .conftest import FAMILIES, MOE_FAMILIES, build_tiny
from .tiny_gguf import write_tiny_gguf


@pytest.mark.parametrize("spec", arch.SPECS, ids=lambda s: s.family)
def test_each_spec_covers_every_table(spec):
    types = set(spec.model_types)
    assert set(spec.hf_architectures.values()) <= types
    assert set(spec.gguf_architectures.values()) <= types
    assert set(spec.config_defaults) <= types
    assert spec.hf_architectures
    wanted = set(spec.matrices) | {"final_norm", "embed", "unembed"}
    wanted |= {"mlp_out_norm"} if spec.mlp_out_norm else set()
    if spec.gguf_architectures or spec.gguf:  # GGUF support is optional (GPT-NeoX, Phi-3)
        assert wanted <= set(spec.gguf), f"{spec.family}: no GGUF for {wanted - set(spec.gguf)}"
    assert set(spec.mlp) == set(spec.matrices)
    assert set(spec.fused) <= set(spec.matrices)
    assert spec.eps_key in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")


def test_no_name_means_two_families():
    for table in ("model_types", "hf_architectures", "gguf_architectures"):
        names = [n for spec in arch.SPECS for n in getattr(spec, table)]
        assert len(names) == len(set(names)), table


def test_every_family_has_a_tiny_test_model_and_every_tiny_model_a_spec():
    tiny = {**FAMILIES, **MOE_FAMILIES}.values()
    tested = {arch.spec_for_model_type(model_type).family for model_type, _, _ in tiny}
    assert tested == {spec.family for spec in arch.SPECS}


def test_model_py_has_no_branches_on_the_reader_kind():
    from conceptvec.models import model

    assert "reader.kind" not in inspect.getsource(model)
    assert "rmsnorm_1p" not in inspect.getsource(model)  # the spec says it: gain_offset


def _toy_spec() -> arch.ArchSpec:
    return dataclasses.replace(
        arch.LLAMA,
        family="toy",
        model_types=("toyllama",),
        gguf_architectures={"toyllama": "toyllama"},
        hf_architectures={"ToyLlamaForCausalLM": "toyllama"},
        config_defaults={"toyllama": {"tie_word_embeddings": False}},
    )


def test_a_new_family_is_one_spec(tmp_path, monkeypatch, tiny_dir):
    """Adding a family touches one file: a spec in SPECS is all the library needs."""
    toy = _toy_spec()
    monkeypatch.setattr(arch, "SPECS", (*arch.SPECS, toy))
    folder = tmp_path / "toy"
    shutil.copytree(tiny_dir("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "toyllama"
    config.pop("tie_word_embeddings", None)  # the spec's config default fills it in
    (folder / "config.json").write_text(json.dumps(config))
    m = conceptvec.load(folder, quiet=True)
    assert m.spec is toy and not m.dims.tied
    ref = conceptvec.decode(conceptvec.load(tiny_dir("llama"), quiet=True), ["L1.3", "L2.5"])
    got = conceptvec.decode(m, ["L1.3", "L2.5"])
    assert [d.top_tokens for d in got] == [d.top_tokens for d in ref]

    hf, tok = build_tiny("llama")
    gguf = write_tiny_gguf(hf, tok, tmp_path / "toy.gguf", arch="toyllama")
    reader = GGUFWeightReader(gguf)
    assert reader.spec is toy and reader.model_type == "toyllama"


def test_the_gguf_reader_presents_hf_names_and_layout(tmp_path):
    hf, tok = build_tiny("llama")
    reader = GGUFWeightReader(write_tiny_gguf(hf, tok, tmp_path / "tiny.gguf"))
    state = hf.state_dict()
    keys = set(reader.keys())
    assert not any(k.startswith(("blk.", "token_embd", "output")) for k in keys)
    for key in ("model.layers.2.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert key in keys and reader.shape(key) == tuple(state[key].shape)
        torch.testing.assert_close(reader.get(key), state[key].float(), atol=0.02, rtol=0.02)
    assert reader.gguf_name("model.layers.2.mlp.up_proj.weight") == "blk.2.ffn_up.weight"
    assert reader.is_quantized("model.layers.2.mlp.up_proj.weight")  # Q8_0
    assert not reader.is_quantized("model.norm.weight") and reader.tied is False


def _tl_layout(hf) -> dict[str, torch.Tensor]:
    """A tiny Gemma 2's weights as TransformerLens' conversion stores them (gains 1 + w)."""
    state = {"unembed.W_U": hf.lm_head.weight.detach().T, "ln_final.w": 1 + hf.model.norm.weight}
    for n, layer in enumerate(hf.model.layers):
        mlp = layer.mlp
        state[f"blocks.{n}.mlp.W_in"] = mlp.up_proj.weight.T
        state[f"blocks.{n}.mlp.W_gate"] = mlp.gate_proj.weight.T
        state[f"blocks.{n}.mlp.W_out"] = mlp.down_proj.weight.T
        state[f"blocks.{n}.ln2_post.w"] = 1 + layer.post_feedforward_layernorm.weight
    return {k: v.detach().clone() for k, v in state.items()}


class HookedTransformer:
    """Stands in for TransformerLens 2/3's class (recognised by name and module)."""

    def __init__(self, hf, tok):
        c = hf.config
        self.tokenizer = tok
        self.cfg = SimpleNamespace(
            original_architecture="Gemma2ForCausalLM",
            normalization_type="RMS",
            gated_mlp=True,
            act_fn="gelu_pytorch_tanh",
            n_layers=c.num_hidden_layers,
            d_model=c.hidden_size,
            d_mlp=c.intermediate_size,
            d_vocab=c.vocab_size,
            d_vocab_out=c.vocab_size,
            eps=c.rms_norm_eps,
            output_logits_soft_cap=c.final_logit_softcapping,
            model_name="tiny-gemma2",
        )
        self._state = _tl_layout(hf)

    def state_dict(self, keep_vars=False):
        return dict(self._state)


HookedTransformer.__module__ = "transformer_lens.HookedTransformer"


def test_gemma_gain_gets_its_one_exactly_once_from_every_source(tmp_path):
    """transformers stores w, TransformerLens 1 + w: both must decode as the model does."""
    hf, tok = build_tiny("gemma2")
    ref = conceptvec.load(hf, tokenizer=tok)
    hooked = conceptvec.load(HookedTransformer(hf, tok))
    assert hooked.reader.effective_gains and not ref.reader.effective_gains
    expected = 1 + hf.model.norm.weight.detach()
    torch.testing.assert_close(ref.final_norm_gain(), expected)
    torch.testing.assert_close(hooked.final_norm_gain(), expected)
    torch.testing.assert_close(hooked.mlp_out_gain(1), ref.mlp_out_gain(1))
    for matrix in ("up", "down"):
        got = conceptvec.decode(hooked, ["L1.3", "L2.7"], matrix=matrix, k=8)
        want = conceptvec.decode(ref, ["L1.3", "L2.7"], matrix=matrix, k=8)
        assert [d.top_tokens for d in got] == [d.top_tokens for d in want]


def test_only_the_backends_know_the_live_libraries():
    """Only models/backends/ knows how TransformerLens and nnsight wrap a HF model, and no
    module elsewhere branches on a backend's name."""
    root = Path(conceptvec.__file__).parent
    knowing = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if '"original_model"' in p.read_text() or '"_module"' in p.read_text()
    )
    assert knowing == ["models/backends/nnsight.py", "models/backends/transformer_lens.py"]
    branch = re.compile(r"backend\s*(==|!=|in)\s*[(\"']")
    outside = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "models/backends" not in p.as_posix() and branch.search(p.read_text())
    ]
    assert outside == []


def test_load_and_resolve_refuse_the_same_objects_with_the_same_words():
    from conceptvec.errors import ModelNotFoundError, UnsupportedModelError
    from conceptvec.interventions import resolve

    class LanguageModel:  # an nnsight wrapper around nothing
        pass

    LanguageModel.__module__ = "nnsight.modeling.language"
    with pytest.raises(ModelNotFoundError, match="cannot use an nnsight LanguageModel"):
        conceptvec.load(LanguageModel())
    with pytest.raises(UnsupportedModelError, match="cannot use an nnsight LanguageModel"):
        resolve(LanguageModel())
