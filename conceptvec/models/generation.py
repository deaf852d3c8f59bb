"""Generation settings from a model folder are data, not orders.

A ``generation_config.json`` may ask for ``num_beams`` 10^6, ``num_return_sequences`` or
``max_length`` in the billions; transformers' ``generate`` would allocate for them. conceptvec
always asks for greedy decoding of a stated number of tokens, so of the folder's settings it
keeps only the special token ids (checked: whole numbers inside the vocabulary, at most
:data:`MAX_IDS` of them) and drops everything else.
"""

from __future__ import annotations

from typing import Any

TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
MAX_IDS = 64
"""The most end-of-sequence ids kept from a folder."""


def _token_ids(value: Any, vocab: int) -> Any:
    ok = lambda v: type(v) is int and 0 <= v < vocab  # noqa: E731 - bool is not an id
    if ok(value):
        return value
    if isinstance(value, list) and 0 < len(value) <= MAX_IDS and all(map(ok, value)):
        return list(value)
    return None


def plain_generation_config(hf: Any) -> None:
    """Replace ``hf.generation_config`` by transformers' defaults plus the folder's special
    token ids, so nothing in the model folder sizes what ``generate`` allocates."""
    old = getattr(hf, "generation_config", None)
    if old is None:
        return
    from transformers import GenerationConfig

    vocab = int(getattr(hf.get_output_embeddings(), "out_features", 0) or 0) or 1 << 31
    kept = {k: _token_ids(getattr(old, k, None), vocab) for k in TOKEN_KEYS}
    hf.generation_config = GenerationConfig(**{k: v for k, v in kept.items() if v is not None})
