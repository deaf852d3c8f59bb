"""A lean GGUF (v2/v3) index: metadata and tensor locations, with lazy big arrays.

``gguf.GGUFReader`` builds a numpy view for every part of every metadata value, which for a
tokenizer of 49k-262k strings takes 2-10 s on a laptop CPU before any tensor can be read.
Reading a neuron needs a handful of scalars and a few tensor locations, so this index walks
the header with ``struct``, keeps small values, remembers where large arrays are (decoded
only when asked for) and memory-maps the tensor data. Dequantization is ``gguf``'s own.

Layout (little-endian): magic ``GGUF``, version u32, tensor count u64, KV count u64; KV
pairs (key string, type u32, value); tensor infos (name, n_dims u32, dims u64..., type u32,
offset u64); padding to ``general.alignment`` (default 32); tensor data.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# GGUF metadata value types -> struct format (None: variable length)
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_EAGER_ARRAY_LIMIT = 256
"""Arrays up to this length are decoded while indexing; longer ones on request."""
_MAX_DEPTH = 8
"""Arrays nest at most this deep (real files nest one level)."""
_MAX_DIMS = 4
"""GGML tensors have at most four dimensions."""


class GGUFFormatError(ValueError):
    """The bytes are not a complete GGUF file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: numpy-order shape, GGML type id, absolute offset, byte size."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _LazyArray:
    type_id: int
    count: int
    offset: int


class GGUFFile:
    """Index of one GGUF file: ``fields`` (metadata) and ``tensors`` (name -> TensorInfo)."""

    def __init__(self, path: str | Path):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                raise GGUFFormatError("the file is empty") from None
        self._pos = 0
        if self._take(4) != b"GGUF":
            raise GGUFFormatError("GGUF magic invalid")
        self.version = self._unpack("I")
        if self.version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = self._unpack("Q"), self._unpack("Q")
        self.fields: dict[str, object] = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("I")
            if n_dims > _MAX_DIMS:
                raise GGUFFormatError(f"tensor {name} has {n_dims} dimensions (at most 4)")
            dims = [self._unpack("Q") for _ in range(n_dims)]
            infos.append((name, dims, self._unpack("I"), self._unpack("Q")))
        alignment = self.fields.get("general.alignment", 32)
        if type(alignment) is not int or alignment < 1 or alignment & (alignment - 1):
            raise GGUFFormatError(
                f"general.alignment is {alignment!r}; it must be a power of two (default 32)"
            )
        start = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
            except (ValueError, KeyError):
                raise GGUFFormatError(f"tensor {name} has unknown type {type_id}") from None
            n = math.prod(dims)  # Python ints: a huge declared shape cannot wrap around
            if n % block:
                raise GGUFFormatError(f"tensor {name} has {n} values, not whole {block}-blocks")
            info = TensorInfo(
                name, tuple(reversed(dims)), type_id, start + offset, n // block * type_size
            )
            if info.offset + info.nbytes > len(self._map):
                raise GGUFFormatError(
                    f"tensor {name} ends at byte {info.offset + info.nbytes} but the file has "
                    f"{len(self._map)} bytes (truncated)"
                )
            self.tensors[name] = info

    # ------------------------------------------------------------------ header
    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._map):
            raise GGUFFormatError("the header ends early (truncated)")
        data = self._map[self._pos : end]
        self._pos = end
        return data

    def _unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self._take(size))[0]

    def _string(self) -> str:
        return self._take(self._unpack("Q")).decode("utf-8", errors="replace")

    def _value(self, type_id: int, depth: int = 0):
        if type_id in _SCALARS:
            return self._unpack(_SCALARS[type_id])
        if type_id == _STRING:
            return self._string()
        if type_id == _ARRAY:
            if depth >= _MAX_DEPTH:
                raise GGUFFormatError(f"metadata arrays nest deeper than {_MAX_DEPTH} levels")
            elem, count = self._unpack("I"), self._unpack("Q")
            if count <= _EAGER_ARRAY_LIMIT:
                return [self._value(elem, depth + 1) for _ in range(count)]
            lazy = _LazyArray(elem, count, self._pos)
            self._skip_array(elem, count, depth + 1)
            return lazy
        raise GGUFFormatError(f"unknown metadata value type {type_id}")

    def _skip_array(self, elem: int, count: int, depth: int = 0) -> None:
        if elem in _SCALARS:
            self._take(struct.calcsize("<" + _SCALARS[elem]) * count)
        elif elem == _STRING:  # hot loop (a tokenizer has 49k-262k strings): no copies
            pos, length = self._pos, _U64.unpack_from
            buffer = self._map
            try:
                for _ in range(count):
                    pos += 8 + length(buffer, pos)[0]
            except (struct.error, OverflowError):  # past the end, or past any offset
                raise GGUFFormatError("the header ends early (truncated)") from None
            if pos > len(buffer):
                raise GGUFFormatError("the header ends early (truncated)")
            self._pos = pos
        else:
            for _ in range(count):
                self._value(elem, depth)

    # ------------------------------------------------------------------ access
    def field(self, name: str, default: Any = None) -> Any:
        """Return metadata ``name`` as a Python value (lists for arrays), or ``default``."""
        value = self.fields.get(name, default)
        if isinstance(value, _LazyArray):
            saved, self._pos = self._pos, value.offset
            try:
                value = [self._value(value.type_id) for _ in range(value.count)]
            finally:
                self._pos = saved
        return value

    def raw(self, name: str) -> np.ndarray:
        """Return tensor ``name``'s bytes as ``uint8 [rows, bytes_per_row]`` (no copy)."""
        info = self.tensors[name]
        data = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
        return data.reshape(rows, -1)

    def type_name(self, name: str) -> str:
        """Return the GGML type name of tensor ``name`` (e.g. ``Q4_1``)."""
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.tensors[name].type_id).name

    def dequantize(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as float32 in numpy order (``[out, in]`` for matrices)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensors[name]
        array = dequantize(self.raw(name), GGMLQuantizationType(info.type_id))
        return np.asarray(array, dtype=np.float32).reshape(info.shape)
