"""Write a tiny Llama-architecture GGUF (Q8_0 MLP matrices) from a tiny HF model."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

_LAYER_NAMES = {
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
}


def write_tiny_gguf(
    hf,
    tok,
    path: Path,
    arch: str = "llama",
    fields: dict | None = None,
    quantize_head: bool = False,
) -> Path:
    """Write ``hf`` (a tiny LlamaForCausalLM) and its byte-level tokenizer as a GGUF file.

    ``fields`` maps metadata keys to ``(value, gguf.GGUFValueType)``, written over the
    standard ones (hostile-input tests declare impossible sizes this way). The LM head is
    float32 unless ``quantize_head`` (Q8_0, as in SmolLM2's GGUF).
    """
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_context_length(128)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    vocab = tok.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_eos_token_id(tok.eos_token_id)
    for key, (value, vtype) in (fields or {}).items():
        sub = gguf.GGUFValueType.get_type(value[0]) if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for layer in range(c.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_NAMES.items():
            names[f"model.layers.{layer}.{hf_name}.weight"] = f"blk.{layer}.{gguf_name}.weight"
    for key, value in hf.state_dict().items():
        array = value.detach().float().numpy().astype(np.float32)
        mlp = names[key].startswith("blk.") and "ffn_" in names[key] and array.ndim == 2
        if mlp or (quantize_head and names[key] == "output.weight"):
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(names[key], gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            w.add_tensor(names[key], array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
