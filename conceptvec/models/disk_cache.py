"""Results that depend only on a model's weights, kept in memory and on disk between calls.

Some results cost seconds to recompute and never change while the weights do not: the
dequantized LM head of a GGUF, the moments of the folded head, every neuron's spread over
the vocabulary, the display text of every token. :func:`cached_tensors` and
:func:`cached_texts` keep them for the life of the :class:`Model` and in
``$CONCEPTVEC_CACHE/derived/<name>-<stamp>/`` (default ``~/.cache/conceptvec``).

Safety:

- the stamp hashes each weight file's identity (device and inode), size, modification and
  change times as its reader opened it, so a file rewritten or replaced gets a new folder,
  and a file that changed under an open model turns caching off for that model; a model
  held in memory (a live torch module, whose weights can be edited in place) has no stamp,
  and nothing of it is cached;
- each file also records the hash of the code that computed it (the ``depends`` modules),
  so a changed recipe recomputes instead of serving an old result;
- files are safetensors (never pickle) or JSON, written to a temporary name and renamed into
  place. A file read back must be a regular file with the expected stamp, names, shapes
  and dtypes, and exactly as many bytes as its header says; anything else (truncated,
  corrupt, stale) is ignored and rebuilt. A cache that cannot be written costs only time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from conceptvec.models.model import Model


log = logging.getLogger(__name__)

FORMAT = "1"
"""Bumped when the layout of cache files changes."""
HEADER_LIMIT = 1 << 24
"""The largest safetensors header read back (16 MiB)."""
_EXTRA_FILES = (".json", ".model", ".txt")
"""Beside safetensors weights, the files of a model folder that the stamp covers (config,
tokenizer, vocabulary)."""
_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
_NAMES = {v: k for k, v in _DTYPES.items()}

# (what, stamp, code stamp) -> value, per Model; an entry goes with its Model.
_MEMORY: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str], Any]] = (
    weakref.WeakKeyDictionary()
)
_warned: set[str] = set()


def cache_root() -> Path:
    """Return conceptvec's cache folder (``$CONCEPTVEC_CACHE`` or ``~/.cache/conceptvec``)."""
    env = os.environ.get("CONCEPTVEC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "conceptvec"


def file_identity(path: str | Path) -> tuple[int, ...]:
    """Return ``(device, inode, size, mtime_ns, ctime_ns)`` of a file (no data is read).

    Writing a file changes its mtime and ctime (which no tool sets back); replacing it
    changes its inode. Readers record this when they open their files.
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def weights_stamp(model: Model) -> str | None:
    """Return a sha256 of ``model``'s files as its reader opened them, or None.

    None when nothing can be cached: a live module (no files), or files that changed since
    the reader opened them (what it reads would not match what the files now hold). A model
    folder's config and tokenizer files count too.
    """
    opened = getattr(model.reader, "opened", None)
    if not opened:
        return None
    h = hashlib.sha256(FORMAT.encode())
    try:
        for path, identity in sorted(opened.items()):
            if file_identity(path) != identity:
                return None
            h.update(f"{identity}\n".encode())
        folder = Path(model.location)
        if folder.is_dir():  # a checkpoint folder (a GGUF is one file)
            for p in sorted(folder.iterdir()):
                if p.suffix in _EXTRA_FILES and p.is_file():
                    h.update(f"{p.name}:{file_identity(p)}\n".encode())
    except OSError:
        return None
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def code_stamp(modules: tuple[str, ...]) -> str:
    """Return a sha256 over the source files of the named modules (the code behind a result).

    Hashed once per process: the code that runs is the code that was imported.
    """
    h = hashlib.sha256(FORMAT.encode())
    for name in modules:
        path = getattr(importlib.import_module(name), "__file__", None)
        h.update(name.encode() + b"\0")
        if path:
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def cached_tensors(
    model: Model,
    what: str,
    compute: Callable[[], dict[str, torch.Tensor]],
    expect: dict[str, tuple[tuple[int, ...], torch.dtype]],
    depends: Iterable[str] = (),
    disk: bool = True,
) -> dict[str, torch.Tensor]:
    """Return ``compute()``, from memory or disk when ``model``'s weights have not changed.

    ``what`` names the result (a file name); ``expect`` gives each tensor's shape and dtype;
    ``depends`` names the modules whose code computes it; ``disk=False`` keeps the result
    in memory only. Tensors read back are the ones written, bit for bit.
    """
    return _cached(model, what, compute, depends, _TensorFile(expect), disk)


def cached_texts(
    model: Model,
    what: str,
    compute: Callable[[], list[str]],
    count: int,
    depends: Iterable[str] = (),
) -> list[str]:
    """Return ``compute()``, a list of ``count`` strings, cached as :func:`cached_tensors` is."""
    return _cached(model, what, compute, depends, _TextFile(count))


def _cached(model, what: str, compute: Callable[[], Any], depends, kind, disk=True) -> Any:
    stamp = weights_stamp(model)
    if stamp is None:
        return kind.check(compute())
    code = code_stamp(tuple(depends))
    key = (what, stamp, code)
    memory = _MEMORY.setdefault(model, {})
    if key in memory:
        return memory[key]
    path = _folder(model, stamp) / (what + kind.suffix)
    meta = {"format": FORMAT, "what": what, "weights": stamp, "code": code}
    value = kind.read(path, meta) if disk else None
    if value is None:
        value = kind.check(compute())
        if disk:
            _write_atomically(path, lambda tmp: kind.write(tmp, value, meta))
    for old in [k for k in memory if k[0] == what]:  # the weights or code changed
        del memory[old]
    memory[key] = value
    return value


def _folder(model: Model, stamp: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(model.location)).name)[:60] or "model"
    return cache_root() / "derived" / f"{name}-{stamp[:16]}"


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through a temporary file in its folder and a rename; warn on failure."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if str(path.parent) not in _warned:
            _warned.add(str(path.parent))
            log.warning("cannot cache in %s (%s); computing each time", path.parent, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _open_regular(path: Path):
    """Return a binary file of the regular file ``path``, or None (missing, FIFO, folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


class _TensorFile:
    """A safetensors file of named tensors with known shapes and dtypes."""

    suffix = ".safetensors"

    def __init__(self, expect: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.expect = {k: (tuple(int(n) for n in s), d) for k, (s, d) in expect.items()}

    def check(self, value: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        got = {k: (tuple(t.shape), t.dtype) for k, t in value.items()}
        if got != self.expect:
            raise ValueError(f"computed {got}, expected {self.expect}")  # a bug, not bad input
        return value

    def write(self, tmp: str, value: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        from safetensors.torch import save_file

        save_file({k: t.contiguous() for k, t in value.items()}, tmp, metadata=meta)

    def read(self, path: Path, meta: dict[str, str]) -> dict[str, torch.Tensor] | None:
        f = _open_regular(path)
        if f is None:
            return None
        with f:
            try:
                return self._read(f, meta)
            except (OSError, ValueError, KeyError, TypeError, RecursionError, struct.error):
                return None

    def _read(self, f, meta: dict[str, str]) -> dict[str, torch.Tensor] | None:
        size = os.fstat(f.fileno()).st_size
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(HEADER_LIMIT, size - 8):
            return None
        header = json.loads(f.read(n))
        if not isinstance(header, dict) or header.pop("__metadata__", None) != meta:
            return None
        if set(header) != set(self.expect):
            return None
        spans = []
        for name, (shape, dtype) in self.expect.items():
            entry = header[name]
            start, end = entry["data_offsets"]
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            if entry["dtype"] != _NAMES.get(dtype) or tuple(entry["shape"]) != shape:
                return None
            if type(start) is not int or end - start != nbytes:
                return None
            spans.append((start, end, name))
        spans.sort()
        if [s for s, _, _ in spans] != [0] + [e for _, e, _ in spans[:-1]]:
            return None  # the tensors must tile the data exactly
        if 8 + n + (spans[-1][1] if spans else 0) != size:
            return None  # truncated, or something appended
        out = {}
        for start, _, name in spans:
            shape, dtype = self.expect[name]
            t = torch.empty(shape, dtype=dtype)
            if t.numel():
                buf = t.view(-1).view(torch.uint8).numpy().data  # a memoryview of t
                f.seek(8 + n + start)
                if f.readinto(buf) != len(buf):
                    return None
            out[name] = t
        return out


class _TextFile:
    """A JSON file holding a list of ``count`` strings."""

    suffix = ".json"

    def __init__(self, count: int):
        self.count = count

    def check(self, value: list[str]) -> list[str]:
        if len(value) != self.count or not all(isinstance(s, str) for s in value):
            raise ValueError(f"computed {len(value)} texts, expected {self.count} strings")
        return value

    def write(self, tmp: str, value: list[str], meta: dict[str, str]) -> None:
        data = json.dumps({"meta": meta, "texts": value}, ensure_ascii=False)
        Path(tmp).write_text(data, encoding="utf-8")

    def read(self, path: Path, meta: dict[str, str]) -> list[str] | None:
        f = _open_regular(path)
        if f is None:
            return None
        with f:
            try:
                data = json.loads(f.read(64 << 20).decode("utf-8"))
            except (OSError, ValueError, RecursionError):
                return None
        if not isinstance(data, dict) or data.get("meta") != meta:
            return None
        texts = data.get("texts")
        if not isinstance(texts, list) or len(texts) != self.count:
            return None
        if not all(isinstance(s, str) for s in texts):
            return None
        return texts
