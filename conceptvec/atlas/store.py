"""The atlas folder on disk: manifest, per-layer shards, vocabulary; atomic writes; hashes.

Layout (every file is written to a temporary name in the same folder, then renamed)::

    ATLAS/
      manifest.json               identity (model, dims, hashes, k, recipe) and shard hashes
      vocab.json                  token id -> display text (so an atlas reads without the model)
      shards/L007.up.safetensors  top_ids, top_values, bottom_ids, bottom_values  [d_mlp, k]
      journal.rank0.jsonl         shards finished since the manifest was last written

A run that stops early leaves the manifest with ``complete: false``; the journal lines say
which shards were finished, and the next run with the same model and recipe resumes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from ..errors import AtlasError, CorruptAtlasError

SCHEMA = "conceptvec.atlas"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
SHARD_DIR = "shards"
JOURNAL_GLOB = "journal.rank*.jsonl"
SHARD_TENSORS = ("top_ids", "top_values", "bottom_ids", "bottom_values")

# The fields that must match for a folder to be resumed or two atlases to be compared.
IDENTITY_FIELDS = (
    "schema_version",
    "model",
    "dims",
    "unembedding_sha256",
    "vocab_sha256",
    "k",
    "recipe",
    "dtype",
)


def shard_name(layer: int, matrix: str) -> str:
    """Return the shard key ``L007.up`` (also its file stem)."""
    return f"L{layer:03d}.{matrix}"


def shard_path(root: Path, name: str) -> Path:
    """Return the path of shard ``name`` inside atlas folder ``root``."""
    return root / SHARD_DIR / f"{name}.safetensors"


def sha256_bytes(data: bytes | memoryview) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename.

    Either the old file or the complete new one exists afterwards, never a partial one. A
    full disk or a read-only folder raises :class:`AtlasError` with the fix.
    """
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            fd = None
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise AtlasError(write_problem(path, e)) from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def file_mode() -> int:
    """Return the mode a plain ``open()`` would give a new file (0o666 less the umask)."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o22)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


_MODE: int | None = None
_JOURNAL_LOCK = threading.Lock()  # shard writers of one process share its journal


def write_problem(path: Path, e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        why = "the disk is full; free some space (finished shards are kept)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable; choose another --out"
    else:
        why = e.strerror or str(e)
    return f"cannot write {path}: {why}; then run the same command again to resume"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    """Read JSON from ``path``; a damaged file raises :class:`CorruptAtlasError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AtlasError(f"{path.parent} has no {path.name}; is it a conceptvec atlas?") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptAtlasError(f"{path} is not valid JSON ({e}); the {what} is damaged") from None


def encode_shard(result: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """Return safetensors bytes for one shard (ids int32, values float32), byte-reproducible.

    The header is written with sorted keys (``safetensors.torch.save`` orders its metadata
    at random), so the same results always give the same bytes and the same sha256.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    blobs, offset = [], 0
    for name in sorted(SHARD_TENSORS):
        dtype = torch.int32 if name.endswith("_ids") else torch.float32
        t = result[name].to(dtype).cpu().contiguous()
        blob = t.numpy().tobytes()
        header[name] = {
            "dtype": "I32" if dtype == torch.int32 else "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])


def decode_shard(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    """Read one shard, checking its bytes against ``expected_sha`` when given."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptAtlasError(
            f"{path} is listed in the manifest but missing; rerun `conceptvec map` into this "
            "folder to remake it"
        ) from None
    if expected_sha is not None and sha256_bytes(data) != expected_sha:
        raise CorruptAtlasError(
            f"{path} does not match its sha256 in {MANIFEST}; it is damaged. Rerun "
            "`conceptvec map` into this folder to remake it"
        )
    try:
        tensors = load(data)
    except Exception as e:
        raise CorruptAtlasError(f"{path} is not a readable shard ({e}); remake it") from None
    missing = [n for n in SHARD_TENSORS if n not in tensors]
    if missing:
        raise CorruptAtlasError(f"{path} lacks {', '.join(missing)}; remake it")
    return tensors


def read_journals(root: Path) -> dict[str, dict[str, Any]]:
    """Return the shard entries recorded in every rank's journal (a torn last line is skipped)."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(root.glob(JOURNAL_GLOB)):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                entries[entry["name"]] = entry
            except (ValueError, KeyError, TypeError):
                continue
    return entries


def append_journal(root: Path, rank: int, entry: dict[str, Any]) -> None:
    """Record one finished shard in this rank's journal (one line, flushed and synced)."""
    path = root / f"journal.rank{rank}.jsonl"
    try:
        with _JOURNAL_LOCK, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise AtlasError(write_problem(path, e)) from None


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the part of a manifest that says which model and recipe made the atlas."""
    return {key: manifest.get(key) for key in IDENTITY_FIELDS}


def identity_mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Return a one-line description of the first identity field that differs, or None."""
    for side in (a, b):
        if (side.get("model") or {}).get("weights") is None:
            return "an in-memory model cannot be matched to files on disk"
    for key in IDENTITY_FIELDS:
        if a.get(key) != b.get(key):
            if key == "model":
                for sub in sorted(set(a.get(key) or {}) | set(b.get(key) or {})):
                    x, y = (a.get(key) or {}).get(sub), (b.get(key) or {}).get(sub)
                    if x != y:
                        return f"model {sub} differs ({x!r} vs {y!r})"
            return f"{key} differs ({_short(a.get(key))} vs {_short(b.get(key))})"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
