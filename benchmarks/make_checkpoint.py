"""Write a random-weight Llama checkpoint in the Hugging Face layout, for benchmarks.

    python benchmarks/make_checkpoint.py --shape llama-3.2-1b --out build/llama-1b
    python benchmarks/make_checkpoint.py --shape llama-3.1-8b --out build/llama-8b --device cuda

The folder gets ``config.json``, ``model-0000N-of-0000M.safetensors`` shards of at most
``--shard-gb`` and ``model.safetensors.index.json``, exactly as ``save_pretrained`` lays
them out, with every tensor of the real architecture (attention too) in ``--dtype``. No
tokenizer is written: conceptvec then shows tokens as ``<id N>``. Weights are N(0, 0.02),
norms are 1 + N(0, 0.1), so norm folding does something.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SHAPES = {
    # name: (layers, d_model, d_mlp, vocab, heads, kv_heads, tied)
    "smollm2-135m": (30, 576, 1536, 49152, 9, 3, True),
    "llama-3.2-1b": (16, 2048, 8192, 128256, 32, 8, True),
    "llama-3.1-8b": (32, 4096, 14336, 128256, 32, 8, False),
}


def tensor_shapes(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """Return every (name, shape) of the checkpoint in save_pretrained's order."""
    layers, d, f, vocab, heads, kv, tied = SHAPES[shape]
    head_dim = d // heads
    out = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (heads * head_dim, d)),
            (p + "self_attn.k_proj.weight", (kv * head_dim, d)),
            (p + "self_attn.v_proj.weight", (kv * head_dim, d)),
            (p + "self_attn.o_proj.weight", (d, heads * head_dim)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (f, d)),
            (p + "mlp.up_proj.weight", (f, d)),
            (p + "mlp.down_proj.weight", (d, f)),
        ]
    out.append(("model.norm.weight", (d,)))
    if not tied:
        out.append(("lm_head.weight", (vocab, d)))
    return out


def config(shape: str, dtype: str) -> dict:
    """Return a transformers LlamaConfig dict for ``shape``."""
    layers, d, f, vocab, heads, kv, tied = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": f,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "torch_dtype": dtype,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }


def write(
    shape: str,
    out: Path,
    dtype: str = "bfloat16",
    device: str = "cpu",
    shard_gb=4.0,
    nudge: float = 0.0,
):
    """Write the checkpoint; return its size in bytes. ``nudge`` > 0 adds relative noise of
    that size (a second generator) to every 2-D weight: the same seed-0 checkpoint as with
    ``nudge=0``, as if fine-tuned, to compare against it."""
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(0)
    noise = torch.Generator(device=device).manual_seed(1)
    limit = int(shard_gb * 2**30)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shp in tensor_shapes(shape):
        n = torch.Size(shp).numel() * torch.finfo(torch_dtype).bits // 8
        if size + n > limit and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((name, shp))
        size += n
    weight_map, total = {}, 0
    for g, group in enumerate(groups):
        fname = f"model-{g + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shp in group:
            if len(shp) == 1:
                t = 1 + 0.1 * torch.randn(shp, generator=gen, device=device)
            else:
                t = 0.02 * torch.randn(shp, generator=gen, device=device, dtype=torch.float32)
                if nudge:
                    t += nudge * 0.02 * torch.randn(shp, generator=noise, device=device)
            tensors[name] = t.to(torch_dtype).cpu()
            weight_map[name] = fname
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config(shape, dtype), indent=2))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cpu", help="where to draw the random numbers")
    ap.add_argument("--shard-gb", type=float, default=4.0)
    ap.add_argument("--nudge", type=float, default=0.0, help="relative noise on 2-D weights")
    args = ap.parse_args()
    t0 = time.perf_counter()
    total = write(args.shape, args.out, args.dtype, args.device, args.shard_gb, args.nudge)
    print(
        f"wrote {args.shape} ({total / 2**30:.2f} GiB, {args.dtype}) to {args.out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
