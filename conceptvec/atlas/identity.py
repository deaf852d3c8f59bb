"""What an atlas records about its model: identity fields, weights fingerprint, vocabulary."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from conceptvec.decoding import _recipe
from conceptvec.models import Model
from conceptvec.tokens import token_text
from conceptvec.version import package_version

from . import store


def weights_fingerprint(model: Model) -> str | None:
    """Return a hash of the weight files' names, sizes and mtimes (None for in-memory models).

    Cheap (no weights are read) and enough to notice a checkpoint that changed on disk
    between an interrupted run and its resumption.
    """
    loc = Path(model.location)
    if not loc.exists():
        return None
    files = (
        [loc]
        if loc.is_file()
        else sorted(p for p in loc.iterdir() if p.suffix in (".safetensors", ".gguf", ".json"))
    )
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def atlas_identity(model: Model, *, k: int, dtype: str, fold_norm: bool) -> dict[str, object]:
    """Return a new manifest's fields (without shards): who, what shape, which recipe."""
    d = model.dims
    return {
        "schema": store.SCHEMA,
        "schema_version": store.SCHEMA_VERSION,
        "model_name": model.name,
        "model": {
            "family": model.spec.family,
            "revision": model.revision,
            "weights": weights_fingerprint(model),
        },
        "source": model.source,
        "location": str(model.location),
        "dims": {
            "n_layers": d.n_layers,
            "d_model": d.d_model,
            "d_mlp": d.d_mlp,
            "vocab": d.vocab,
            **({"n_experts": d.n_experts} if d.n_experts else {}),  # d_mlp is per expert
        },
        "k": k,
        "dtype": dtype,
        "recipe": {m: _recipe(model, m, fold_norm) for m in ("up", "down")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conceptvec_version": package_version(),
    }


def vocab_texts(model: Model) -> bytes:
    """Return ``vocab.json``'s bytes: the display text of every token id, in id order."""
    text = token_text(model.tokenizer)
    return json.dumps(text.many(range(model.dims.vocab)), ensure_ascii=False).encode()
