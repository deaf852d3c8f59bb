"""GGUF files: their HF config, tokenizer and (once) a safetensors copy, cached on disk.

Parsing a GGUF's tokenizer metadata and dequantizing every tensor through transformers takes
~20 s for SmolLM2 on a laptop CPU; a safetensors copy then loads in ~2 s. So the first use
of each GGUF converts what is asked for (config, tokenizer or the whole model) into
``$CONCEPTVEC_CACHE/gguf/<name>-<key>/`` (default ``~/.cache/conceptvec``), writing to a
temporary folder and renaming it, so an interrupted conversion never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptvec.errors import NoWeightsError
from conceptvec.files import read_json

from .config import JsonConfig
from .disk_cache import cache_root

if TYPE_CHECKING:
    import torch

    from conceptvec.types import Tokenizer

log = logging.getLogger(__name__)


def cache_dir_for(path: Path) -> Path:
    """Return the cache folder for one GGUF file, keyed by its path, size and mtime."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_root() / "gguf" / f"{path.stem}-{key[:12]}"


def _write_atomically(final: Path, write) -> Path:
    """Run ``write(tmp_folder)`` and rename the folder to ``final``; return ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def gguf_config(path: Path) -> JsonConfig:
    """Return the HF config of a GGUF file, as transformers reads it (cached as config.json).

    transformers converts the GGUF's metadata once; later calls read the cached config.json
    without importing transformers (1-2 s), as a folder's config is read. A cached file
    that cannot be read is converted again.
    """
    folder = cache_dir_for(path) / "config"
    data = _cached_config(folder / "config.json")
    if data is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        shutil.rmtree(folder, ignore_errors=True)  # an unreadable earlier copy
        _write_atomically(folder, config.save_pretrained)
        data = read_json(folder / "config.json", NoWeightsError, "delete it to convert again")
    return JsonConfig(data, str(folder))


def _cached_config(path: Path) -> dict | None:
    try:
        data = read_json(path, NoWeightsError, "")
    except NoWeightsError:
        return None
    return data if isinstance(data, dict) and "model_type" in data else None


def gguf_tokenizer(path: Path) -> Tokenizer:
    """Return the HF tokenizer of a GGUF file (converted once, then cached)."""
    from transformers import AutoTokenizer

    folder = cache_dir_for(path) / "tokenizer"
    if not folder.exists():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        _write_atomically(folder, tok.save_pretrained)
    return AutoTokenizer.from_pretrained(str(folder))


def gguf_hf_model(path: Path, dtype: torch.dtype | str | None = None) -> Any:
    """Return the HF causal LM of a GGUF file, from a cached safetensors copy when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = cache_dir_for(path) / "model"
    if not (folder / "config.json").exists():
        log.info("converting %s to safetensors once (cached in %s)", path.name, folder)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        # The weights are plain dequantized tensors now; drop transformers' GGUF quantizer
        # marks, which make save_pretrained refuse.
        model.hf_quantizer = None  # type: ignore[assignment]  # typed as always set
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            meta = {"gguf": str(path.resolve()), "size": path.stat().st_size}
            (tmp / "conceptvec.json").write_text(json.dumps(meta))

        _write_atomically(folder, write)
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
