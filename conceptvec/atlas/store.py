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

from conceptvec import files
from conceptvec.errors import AtlasError, CorruptAtlasError
from conceptvec.models.arch import MAX_SIZE

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


def shard_name(layer: int, matrix: str, expert: int | None = None) -> str:
    """Return the shard key ``L007.up`` (also its file stem)."""
    if expert is not None:  # one expert of a mixture of experts: L012.E005.down
        return f"L{layer:03d}.E{expert:03d}.{matrix}"
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
        os.fchmod(fd, files.file_mode())
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


_JOURNAL_LOCK = threading.Lock()  # shard writers of one process share its journal


def write_problem(path: Path, e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        why = "the disk is full; free some space (finished shards are kept)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable; choose another --out"
    else:
        why = e.strerror or str(e)
    return f"cannot write {path}: {why}; then run the same command again to resume"


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    """Read JSON from ``path`` (a regular file of at most 64 MiB); a damaged file raises
    :class:`CorruptAtlasError`."""
    if not path.exists() and not path.is_symlink():
        raise AtlasError(f"{path.parent} has no {path.name}; is it a conceptvec atlas?")
    return files.read_json(path, CorruptAtlasError, f"the {what} is damaged")


def _positive_int(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_SIZE


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Return ``manifest`` if its fields have the types and ranges an atlas needs, else raise
    :class:`CorruptAtlasError` naming the first bad field."""

    def bad(what: str) -> CorruptAtlasError:
        return CorruptAtlasError(f"{path}: {what}; the manifest is damaged, remake the atlas")

    if not isinstance(manifest, dict):
        raise bad(f"holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("schema") != SCHEMA:
        raise AtlasError(f"{path} is not a conceptvec atlas manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise AtlasError(
            f"{path.parent} uses atlas schema {manifest.get('schema_version')!r}, this "
            f"conceptvec reads {SCHEMA_VERSION}; remake it with `conceptvec map`"
        )
    if not isinstance(manifest.get("model_name"), str):
        raise bad("model_name is missing or not a string")
    dims = manifest.get("dims")
    if not isinstance(dims, dict):
        raise bad("dims is missing or not an object")
    for key in ("n_layers", "d_model", "d_mlp", "vocab"):
        if not _positive_int(dims.get(key)):
            raise bad(f"dims.{key} is {dims.get(key)!r}, not a whole number from 1 to {MAX_SIZE}")
    k = manifest.get("k")
    if not _positive_int(k) or k > dims["vocab"]:
        raise bad(f"k is {k!r}, not a whole number from 1 to the vocabulary size")
    if not isinstance(manifest.get("vocab_sha256"), str):
        raise bad("vocab_sha256 is missing or not a string")
    recipe = manifest.get("recipe")
    if not isinstance(recipe, dict) or not all(
        isinstance(recipe.get(m), dict) for m in ("up", "down")
    ):
        raise bad("recipe is missing or lacks its up and down entries")
    shards = manifest.get("shards")
    if not isinstance(shards, dict):
        raise bad("shards is missing or not an object")
    for name, entry in shards.items():
        why = shard_entry_problem(name, entry, dims["n_layers"])
        if why:
            raise bad(f"shard {name!r} {why}")
    return manifest


def shard_entry_problem(name: object, entry: object, n_layers: int | None = None) -> str | None:
    """Return why ``entry`` is not a shard record this atlas could have written, or None.

    Its file must be exactly ``shards/<name>.safetensors``: a record that points anywhere
    else (another folder, an absolute path, another shard) is refused.
    """
    if not isinstance(entry, dict):
        return "is not an object"
    layer, matrix = entry.get("layer"), entry.get("matrix")
    if type(layer) is not int or layer < 0 or (n_layers is not None and layer >= n_layers):
        return f"has layer {layer!r}, outside the model's layers"
    if matrix not in ("up", "gate", "down"):
        return f"has matrix {matrix!r} (expected up, gate or down)"
    expert = entry.get("expert")
    if expert is not None and (type(expert) is not int or expert < 0):
        return f"has expert {expert!r}, not a whole number"
    if name != shard_name(layer, matrix, expert):
        return f"is recorded as layer {layer} {matrix}, which is not its name"
    if entry.get("file") != f"{SHARD_DIR}/{name}.safetensors":
        return f"points at {entry.get('file')!r}, not {SHARD_DIR}/{name}.safetensors"
    sha = entry.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        return "has no valid sha256"
    return None


def shard_file(root: Path, entry: dict[str, object]) -> Path:
    """Return the path of a shard record's file, confined to the atlas folder ``root``."""
    return files.confined(
        root, entry.get("file"), CorruptAtlasError, "shards must live in the atlas's shards/"
    )


LOCK = ".conceptvec.lock"
"""Lock file of a ``map`` run: held with ``flock`` while it writes; holds the owner's pid."""


def lock_folder(root: Path) -> tuple[int, Path] | None:
    """Take the atlas folder's lock for this process and return its handle, or raise
    :class:`AtlasError` naming the pid of the run that holds it.

    The lock is an ``flock`` on ``root/.conceptvec.lock`` (which records the owner's pid),
    so the kernel releases it when the owner dies, even by ``kill -9``; a file left behind
    then is simply taken over. :func:`unlock_folder` removes the file.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are not guarded
        return None
    path = root / LOCK
    for _ in range(10):
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), files.file_mode()
            )
        except OSError as e:
            raise AtlasError(write_problem(path, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AtlasError(
                f"another `conceptvec map` (pid {owner}) is writing {root}; wait for it to "
                "finish or choose another --out"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except OSError:
            same = False
        if same:  # not a file its last owner unlinked while we were opening it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return (fd, path)
        os.close(fd)
    raise AtlasError(f"cannot take the lock {path}; try again")


def unlock_folder(handle: tuple[int, Path] | None) -> None:
    """Release a lock taken by :func:`lock_folder` and remove its file."""
    if handle is None:
        return
    fd, path = handle
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def refuse_links(root: Path) -> None:
    """Raise :class:`AtlasError` if anything an atlas run writes or deletes in ``root`` is a
    symlink: the manifest, vocabulary, journals, ``shards/`` or a file inside it. Writing
    or clearing through a link would change files outside the atlas folder, so this runs
    before anything is written."""
    names = [root / MANIFEST, root / VOCAB, root / SHARD_DIR, *root.glob(JOURNAL_GLOB)]
    shards = root / SHARD_DIR
    if shards.is_dir() and not shards.is_symlink():
        names += list(shards.iterdir())
    for path in names:
        if path.is_symlink():
            raise AtlasError(
                f"{path} is a symbolic link; an atlas run never writes through links "
                "(it could change files outside the atlas); remove the link or choose another --out"
            )


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files an interrupted run left (``.NAME.*.tmp`` of the manifest,
    the vocabulary and the shards) and return them; only our own name patterns are touched.

    Call it only while holding the folder's lock, so no live run's temporaries are removed.
    """
    removed = []
    patterns = [(root, f".{MANIFEST}.*.tmp"), (root, f".{VOCAB}.*.tmp")]
    patterns.append((root / SHARD_DIR, ".L[0-9][0-9][0-9]*.safetensors.*.tmp"))
    for folder, pattern in patterns:
        if not folder.is_dir():
            continue
        for path in folder.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def encode_shard(result: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """Return safetensors bytes for one shard (ids int32, values float32), byte-reproducible.

    The header is written with sorted keys (``safetensors.torch.save`` orders its metadata
    at random), so the same results always give the same bytes and the same sha256.
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(meta.items()))}
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


def decode_shard(
    path: Path, expected_sha: str | None, shape: tuple[int, int] | None = None, vocab: int = 0
) -> dict[str, torch.Tensor]:
    """Read one shard, checking its bytes against ``expected_sha`` when given.

    With ``shape`` (``(d_mlp, k)``) the file may hold at most the bytes such a shard needs,
    every tensor must have that shape, and with ``vocab`` every id must be a token id.
    """
    from safetensors.torch import load

    if not path.exists() and not path.is_symlink():
        raise CorruptAtlasError(
            f"{path} is listed in the manifest but missing; rerun `conceptvec map` into this "
            "folder to remake it"
        )
    limit = files.JSON_LIMIT if shape is None else shape[0] * shape[1] * 16 + (1 << 16)
    data = files.read_bounded(path, CorruptAtlasError, "remake the atlas", limit)
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
    for name in SHARD_TENSORS:
        t = tensors[name]
        want = torch.int32 if name.endswith("_ids") else torch.float32
        if t.dtype != want or (shape is not None and tuple(t.shape) != tuple(shape)):
            raise CorruptAtlasError(
                f"{path}: {name} is {t.dtype} {tuple(t.shape)}, expected {want} {shape}; remake it"
            )
        if (
            vocab
            and name.endswith("_ids")
            and t.numel()
            and not 0 <= int(t.min()) <= int(t.max()) < vocab
        ):
            raise CorruptAtlasError(f"{path}: {name} holds ids outside the vocabulary; remake it")
    return tensors


def read_journals(root: Path) -> dict[str, dict[str, object]]:
    """Return the shard entries recorded in every rank's journal (a torn last line is skipped)."""
    entries: dict[str, dict[str, object]] = {}
    for path in sorted(root.glob(JOURNAL_GLOB)):
        data = files.read_bounded(path, CorruptAtlasError, "delete it and run again")
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                entries[entry["name"]] = entry
            except (ValueError, KeyError, TypeError, RecursionError):
                continue
    return entries


def append_journal(root: Path, rank: int, entry: dict[str, object]) -> None:
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


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
