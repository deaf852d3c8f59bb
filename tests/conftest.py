"""Tiny random-weight models of every supported family, built from configs and saved to disk.

Each fixture model has 2-3 layers, d_model 32, d_mlp 64 and a real (tiny) tokenizer trained
here, so decoding, token display and the CLI run end to end in milliseconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

CORPUS = [
    "The dog chased the cat across the garden while the bird sang.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Harry Potter went to Hogwarts with Ron and Hermione.",
    "naïve café — déjà vu! 12345 67890 emoji 🐶 and newline\nend.",
] * 4

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)

# family label -> (model_type, extra config, tokenizer kind)
FAMILIES = {
    "llama": ("llama", dict(num_key_value_heads=2), "bytelevel"),
    "mistral": ("mistral", dict(num_key_value_heads=2), "bytelevel"),
    "qwen2": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True), "bytelevel"),
    "gemma": ("gemma", dict(num_key_value_heads=2, head_dim=8), "sentencepiece"),
    "gemma2": ("gemma2", dict(num_key_value_heads=2, head_dim=8), "sentencepiece"),
    "gemma3": ("gemma3_text", dict(num_key_value_heads=2, head_dim=8), "sentencepiece"),
    "olmo": ("olmo", dict(), "bytelevel"),
    "olmo2": ("olmo2", dict(), "bytelevel"),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=3, n_head=4, n_positions=64), "bytelevel"),
    "gpt_neox": ("gpt_neox", dict(max_position_embeddings=64), "bytelevel"),
    "phi3": ("phi3", dict(num_key_value_heads=2), "bytelevel"),
}

# Mixture-of-experts families: neuron ids name an expert (L1.E2.7), so the dense family
# tests do not apply; tests/test_moe.py checks them against the model's own experts.
MOE_FAMILIES = {
    "olmoe": ("olmoe", dict(num_experts=4, num_experts_per_tok=2), "bytelevel"),
}


def make_tokenizer(kind: str, corpus: list[str] | None = None):
    """Return a PreTrainedTokenizerFast trained on ``corpus`` (default CORPUS; byte-level BPE
    or SentencePiece)."""
    corpus = CORPUS if corpus is None else corpus
    from tokenizers import (
        SentencePieceBPETokenizer,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(corpus, trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    else:
        sp = SentencePieceBPETokenizer()
        sp.train_from_iterator(corpus, vocab_size=300, special_tokens=["<pad>", "<eos>", "<0x0A>"])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=sp._tokenizer, eos_token="<eos>", pad_token="<pad>"
        )
    return fast


def build_tiny(family: str, seed: int = 0, corpus: list[str] | None = None):
    """Return (hf_model, tokenizer) for one family with random weights, its tokenizer
    trained on ``corpus`` (default CORPUS)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra, tok_kind = {**FAMILIES, **MOE_FAMILIES}[family]
    tok = make_tokenizer(tok_kind, corpus)
    kw = {**COMMON, **extra, "vocab_size": len(tok)}
    if model_type == "gpt2":
        kw = {k: v for k, v in kw.items() if k not in COMMON}
    kw.update(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    config = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random init leaves norm gains at 1 (or 0 for Gemma's 1 + w) and biases at 0: perturb
    # them so that folding the norm, and getting Gemma's 1 + w right, changes the answer.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
    return model, tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Return a function family -> folder holding a saved tiny model and its tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            model, tok = build_tiny(family)
            folder = root / family
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            made[family] = folder
        return made[family]

    return get


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Keep conceptvec's GGUF cache of unit tests out of the user's home (real-model tests
    share the user's cache, so SmolLM2 is converted once per machine)."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("CONCEPTVEC_CACHE", str(tmp_path_factory.getbasetemp() / "cvcache"))


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``conceptvec ARGS`` in-process; return (exit code, stdout, stderr)."""
    from conceptvec.cli import main

    monkeypatch.setattr(sys, "argv", ["conceptvec", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
