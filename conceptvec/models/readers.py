"""Streaming weight readers: one tensor at a time, never the whole model.

Every source presents one protocol, :class:`WeightReader`: tensors under their Hugging Face
state-dict names, in the Hugging Face layout (``[out, in]`` for ``nn.Linear``, ``[in, out]``
for GPT-2's ``Conv1D``), read one at a time:

- :class:`SafetensorsReader` over a folder of safetensors shards (through the index file
  when there is one), reading ``down_proj`` of layer 3 touches only that tensor's bytes;
- :class:`GGUFWeightReader` over a ``.gguf`` file, dequantizing one tensor on request and
  naming it as transformers would (``blk.3.ffn_down.weight`` is
  ``model.layers.3.mlp.down_proj.weight``; the table is the family's :class:`ArchSpec`);
- :class:`ModuleReader` over an already-loaded ``torch.nn.Module`` (no copy);
- :class:`conceptvec.models.backends.hooked.HookedTransformerReader` over a TransformerLens
  ``HookedTransformer``.

Values are as stored (dtype). Norm gains are the one thing whose meaning differs between
sources: Gemma's RMSNorm multiplies by ``1 + w``; transformers stores ``w``, while llama.cpp
and TransformerLens store ``1 + w``. A reader says which with :attr:`WeightReader.effective_gains`,
and :meth:`conceptvec.models.Model.norm_gain` is the one place that adds the 1.
:class:`conceptvec.models.Model` turns matrices into the canonical ``[neurons, d_model]``
orientation using the spec.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Protocol

import torch

from conceptvec.errors import CorruptWeightsError, NoWeightsError
from conceptvec.files import confined, read_json, regular_file

from .arch import ArchSpec, model_type_for_gguf, spec_for_model_type
from .disk_cache import file_identity


class WeightReader(Protocol):
    """What every weight source presents: tensors by Hugging Face name, HF layout."""

    kind: str
    """``safetensors``, ``gguf``, ``module`` or ``hooked_transformer`` (for display)."""
    effective_gains: bool
    """True when norm gains are stored as the multiplier the model applies (Gemma's
    ``1 + w``: llama.cpp and TransformerLens store it so); False for transformers' ``w``."""

    @property
    def tied(self) -> bool | None:
        """Whether the source itself says the LM head is the embedding (a GGUF without
        ``output.weight``), or None to follow the config."""
        ...

    def has(self, key: str) -> bool:
        """Return True if the source holds ``key``."""
        ...

    def keys(self) -> list[str]:
        """Return every tensor name the source presents."""
        ...

    def shape(self, key: str) -> tuple[int, ...]:
        """Return the HF shape of ``key`` without reading its data."""
        ...

    def dtype(self, key: str) -> str:
        """Return the stored type name of ``key`` (``BF16``, ``Q4_1``, ``float32``)."""
        ...

    def is_quantized(self, key: str) -> bool:
        """Return True when reading ``key`` dequantizes it (slow enough to cache)."""
        ...

    def get(self, key: str, pin_memory: bool = False) -> torch.Tensor:
        """Return ``key`` in HF layout (``pin_memory``: page-locked, where the source can)."""
        ...


INDEX_FILE = "model.safetensors.index.json"
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SINGLE_FILE = "model.safetensors"
_NOT_FLOAT = {"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}
"""Stored dtypes that no weight or bias may have."""


class SafetensorsReader:
    """Read tensors one at a time from a folder of safetensors files."""

    kind = "safetensors"
    effective_gains = False
    tied = None

    def __init__(self, folder: str | Path, root: str | Path | None = None):
        """Open every shard in ``folder``; each must resolve to a regular file inside ``root``.

        ``root`` defaults to ``folder``; a Hugging Face cache snapshot passes its repository
        folder, whose ``blobs/`` the snapshot's symlinks point into.
        """
        from safetensors import safe_open

        self.folder = Path(folder)
        self.root = Path(root) if root is not None else self.folder
        index = self.folder / INDEX_FILE
        fix = "re-download the checkpoint"
        if index.exists() or index.is_symlink():
            confined(self.root, os.path.relpath(index, self.root), CorruptWeightsError, fix)
            data = read_json(index, CorruptWeightsError, fix)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
            ):
                raise CorruptWeightsError(
                    f"{index} is not a valid safetensors index (expected an object whose "
                    f'"weight_map" maps tensor names to file names); {fix}'
                )
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise NoWeightsError(
                f"{self.folder} has no .safetensors weights; conceptvec reads safetensors or "
                "GGUF only (convert .bin checkpoints with transformers' save_pretrained)"
            )
        self._handles = {}
        self.opened: dict[Path, tuple[int, ...]] = {}
        """Each weight file's identity when opened (see :func:`disk_cache.file_identity`)."""
        self._headers: dict[str, dict] = {}
        self._data_start: dict[str, int] = {}
        self._key_to_file: dict[str, str] = {}
        self._paths: dict[str, Path] = {}
        for name in files:
            path = self.folder / name
            resolved = _weight_path(self.folder, self.root, name)
            if not path.exists() and not path.is_symlink():
                raise NoWeightsError(
                    f"{path} is listed in {INDEX_FILE} but missing; re-download the checkpoint"
                )
            regular_file(resolved, CorruptWeightsError, "re-download the checkpoint")
            self.opened[resolved] = file_identity(resolved)  # before opening, as for a GGUF
            self._paths[name] = resolved
            try:
                handle = safe_open(str(self._paths[name]), framework="pt")
                keys = list(handle.keys())
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise CorruptWeightsError(
                    f"{path} is truncated or corrupted ({_one_line(e)}); re-download or re-save it"
                ) from None
            self._handles[name] = handle
            for key in keys:
                self._key_to_file[key] = name
        if weight_map is not None:
            missing = [k for k, f in weight_map.items() if self._key_to_file.get(k) != f]
            if missing:
                raise CorruptWeightsError(
                    f"{self.folder}: {len(missing)} tensors listed in {INDEX_FILE} are not in "
                    f"their shards (first: {missing[0]}); re-download the checkpoint"
                )
        for name in files:
            self._check_dtypes(name)

    def _check_dtypes(self, name: str) -> None:
        """Raise unless every weight and bias in shard ``name`` is stored as a float (its
        header says; no tensor is read): integer or bool weights would be decoded and run
        as numbers they do not mean."""
        try:
            layout = self._layout(name)
        except Exception as e:
            raise CorruptWeightsError(
                f"{self._paths[name]} has an unreadable header ({_one_line(e)}); re-download it"
            ) from None
        for key, entry in layout.items():
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            if key.endswith((".weight", ".bias")) and dtype in _NOT_FLOAT:
                raise CorruptWeightsError(
                    f"{self._paths[name]}: {key} is stored as {dtype}, not as floating point; "
                    "conceptvec reads float weights (F32, F16, BF16): re-download the "
                    "checkpoint, or use an unquantized one (or a GGUF)"
                )

    @property
    def files(self) -> list[Path]:
        """The resolved paths of the shard files, in name order."""
        return [self._paths[name] for name in sorted(self._paths)]

    def has(self, key: str) -> bool:
        """Return True if the checkpoint holds ``key``."""
        return key in self._key_to_file

    def keys(self) -> list[str]:
        """Return every tensor name in the checkpoint."""
        return list(self._key_to_file)

    def shape(self, key: str) -> tuple[int, ...]:
        """Return the stored shape of ``key`` without reading its data."""
        return tuple(self._handle(key).get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        """Return the stored dtype name of ``key`` (e.g. ``BF16``)."""
        return str(self._handle(key).get_slice(key).get_dtype())

    def is_quantized(self, key: str) -> bool:  # noqa: ARG002 - the WeightReader protocol
        """Return False: safetensors tensors are read as stored."""
        return False

    def get(self, key: str, pin_memory: bool = False) -> torch.Tensor:
        """Return the tensor ``key`` as stored (dtype and layout), in its own memory.

        The bytes are read (a seek, then one ``readinto``) into a fresh tensor rather than
        through a memory map, so a streamed matrix leaves no mapped file pages behind once dropped
        (peak memory stays near one matrix, not the sum of every matrix read). With
        ``pin_memory`` the tensor lands in page-locked memory, ready for an async GPU copy.
        """
        try:
            name = self._key_to_file[key]
        except KeyError:
            raise KeyError(f"{key} is not in the checkpoint at {self.folder}") from None
        try:
            entry = self._layout(name).get(key)
            if entry is None or entry["dtype"] not in _ST_DTYPES:
                return self._handle(key).get_tensor(key)
            start, end = entry["data_offsets"]
            dtype = _ST_DTYPES[entry["dtype"]]
            out = torch.empty(entry["shape"], dtype=dtype, pin_memory=pin_memory)
            buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
            if buf is not None:
                if buf.nbytes != end - start:
                    raise ValueError(f"{key}: {end - start} bytes for {buf.nbytes} expected")
                with open(self._paths[name], "rb") as f:
                    f.seek(self._data_start[name] + start)
                    if f.readinto(buf.data) != buf.nbytes:  # buf.data: a memoryview of out
                        raise ValueError(f"{key} is cut short")
            return out
        except Exception as e:
            raise CorruptWeightsError(
                f"cannot read {key} from {self.folder} ({_one_line(e)}); re-download the checkpoint"
            ) from None

    def _layout(self, name: str) -> dict:
        """Return the parsed safetensors header of shard ``name`` (cached)."""
        if name not in self._headers:
            with open(self._paths[name], "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self._headers[name] = json.loads(f.read(n))
            self._data_start[name] = 8 + n
        return self._headers[name]

    def _handle(self, key: str):
        try:
            return self._handles[self._key_to_file[key]]
        except KeyError:
            raise KeyError(f"{key} is not in the checkpoint at {self.folder}") from None


class GGUFWeightReader:
    """Read and dequantize tensors one at a time from a GGUF file (memory-mapped), under the
    Hugging Face names of its family (:attr:`ArchSpec.gguf` maps them)."""

    kind = "gguf"
    effective_gains = True  # llama.cpp's converter stores Gemma's norm gains as 1 + w

    def __init__(self, path: str | Path):
        """Open ``path``; raise unless it is a readable GGUF of a supported architecture."""
        from .gguf_file import GGUFFile

        self.path = Path(path)
        regular_file(self.path, CorruptWeightsError, "pass a .gguf file")
        self.opened = {self.path: file_identity(self.path)}
        """The file's identity (:func:`disk_cache.file_identity`); taken before mapping it, so
        a file replaced in between reads as changed, never as the same."""
        try:
            self.file = GGUFFile(self.path)
        except (OSError, ValueError, struct.error, UnicodeDecodeError, RecursionError) as e:
            raise CorruptWeightsError(
                f"{self.path} is not a readable GGUF file ({_one_line(e)}); it may be truncated: "
                "re-download it"
            ) from None
        if not self.file.tensors:
            raise NoWeightsError(f"{self.path} holds no tensors; is it a vocabulary-only GGUF?")
        self.model_type = model_type_for_gguf(self.field("general.architecture"), self.path)
        """The ``model_type`` transformers reads this file as."""
        self.spec: ArchSpec = spec_for_model_type(self.model_type)
        self._names = self._hf_names(self.spec)

    def _hf_names(self, spec: ArchSpec) -> dict[str, tuple[str, bool]]:
        """Return HF name -> (GGUF name, transpose) for every tensor the family's spec maps.

        GGUF stores every matrix ``[out, in]``; a family whose HF layout is ``in_out``
        (GPT-2's Conv1D) gets the transpose. Norms keep their ``.bias`` beside the gain.
        """
        prefix = spec.prefixes[0]
        layers = _count_blocks(self.file.tensors)  # not block_count: metadata can lie
        names: dict[str, tuple[str, bool]] = {}

        def add(hf: str, gguf: str, transpose: bool = False) -> None:
            if gguf in self.file.tensors:
                names[hf] = (gguf, transpose)
            if gguf.endswith(".weight") and not transpose:  # a norm's bias, if it has one
                bias = gguf[: -len("weight")] + "bias"
                if bias in self.file.tensors:
                    names[hf[: -len("weight")] + "bias"] = (bias, False)

        for logical, gguf in spec.gguf.items():
            if logical in spec.mlp:
                relative, layout = spec.mlp[logical]
                for layer in range(layers):
                    hf = prefix + relative.format(layer=layer)
                    add(hf, gguf.format(layer=layer), layout == "in_out")
            elif logical == "unembed":
                add(spec.unembed, gguf)
            elif logical == "mlp_out_norm" and spec.mlp_out_norm:
                for layer in range(layers):
                    add(prefix + spec.mlp_out_norm.format(layer=layer), gguf.format(layer=layer))
            else:
                key = {"final_norm": spec.final_norm, "embed": spec.embed}[logical]
                if key:
                    add(prefix + key, gguf)
        return names

    @property
    def tied(self) -> bool:
        """True when the file has no ``output.weight`` (llama.cpp then ties the head)."""
        return not self.has(self.spec.unembed)

    def has(self, key: str) -> bool:
        """Return True if the file holds the tensor HF calls ``key``."""
        return key in self._names

    def keys(self) -> list[str]:
        """Return the HF name of every tensor the family's spec maps."""
        return list(self._names)

    def gguf_name(self, key: str) -> str:
        """Return the GGUF tensor name behind HF name ``key``."""
        try:
            return self._names[key][0]
        except KeyError:
            raise KeyError(f"{key} is not in {self.path}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        """Return the HF shape of ``key``."""
        name, transpose = self.gguf_name(key), self._names[key][1]
        shape = tuple(self.file.tensors[name].shape)  # numpy order: [out, in] for matrices
        return shape[::-1] if transpose else shape

    def dtype(self, key: str) -> str:
        """Return the GGML type name of ``key`` (e.g. ``Q4_1``)."""
        return self.file.type_name(self.gguf_name(key))

    def is_quantized(self, key: str) -> bool:
        """Return True unless ``key`` is stored as plain F32, F16 or BF16."""
        return self.dtype(key) not in _PLAIN_GGML

    def get(self, key: str, pin_memory: bool = False) -> torch.Tensor:  # noqa: ARG002
        """Return tensor ``key`` dequantized to float32, in HF layout (``pin_memory`` is
        ignored: the tensor is made by dequantizing)."""
        name = self.gguf_name(key)
        transpose = self._names[key][1]
        try:
            array = self.file.dequantize(name)
        except KeyError:
            raise
        except Exception as e:
            raise CorruptWeightsError(
                f"cannot dequantize {name} from {self.path} ({_one_line(e)}); re-download it"
            ) from None
        w = torch.from_numpy(array if array.flags.writeable else array.copy())
        return w.T if transpose else w

    def field(self, name: str, default: Any = None) -> Any:
        """Return the metadata value ``name`` (a scalar, string or list), or ``default``."""
        return self.file.field(name, default)


_PLAIN_GGML = ("F32", "F16", "BF16")
"""GGUF tensor types read without dequantizing (a cast, not worth a disk copy)."""


def _count_blocks(tensors: Any) -> int:
    """Return 1 + the highest ``blk.N.`` index among the tensor names (0 when none)."""
    highest = -1
    for name in tensors:
        if name.startswith("blk."):
            part = name.split(".", 2)[1]
            if part.isdigit():
                highest = max(highest, int(part))
    return highest + 1


class ModuleReader:
    """Read tensors from an already-loaded ``torch.nn.Module`` by state-dict key (no copy)."""

    kind = "module"
    effective_gains = False
    tied = None

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self._state: dict[str, torch.Tensor] = {}
        for key, value in module.state_dict(keep_vars=True).items():
            # TransformerLens' bridge wraps each HF submodule in place and keeps the original
            # under ``_original_component``; reading through it gives the HF key names back.
            self._state.setdefault(key.replace("._original_component", ""), value)

    def has(self, key: str) -> bool:
        """Return True if the module has a parameter or buffer named ``key``."""
        return key in self._state

    def keys(self) -> list[str]:
        """Return every state-dict key."""
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        """Return the shape of ``key``."""
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> str:
        """Return the dtype name of ``key``."""
        return str(self._state[key].dtype).replace("torch.", "")

    def is_quantized(self, key: str) -> bool:  # noqa: ARG002 - the WeightReader protocol
        """Return False: a module's tensors are read as they are."""
        return False

    def get(self, key: str, pin_memory: bool = False) -> torch.Tensor:  # noqa: ARG002
        """Return the live tensor ``key``, detached (edits to the model show through;
        ``pin_memory`` is ignored: it is not a copy)."""
        return self._state[key].detach()


def _weight_path(folder: Path, root: Path, name: str) -> Path:
    """Return the resolved path of weight file ``name`` in ``folder``, or raise if it leads
    outside ``root`` (an absolute name, ``..`` or a symlink leading out)."""
    fix = (
        "conceptvec reads weights only from inside the model folder; copy the file into it "
        "(or re-download the checkpoint)"
    )
    if Path(name).is_absolute():
        raise CorruptWeightsError(f"{folder}: weight file {name!r} is an absolute path; {fix}")
    relative = os.path.relpath(folder / name, root)
    return confined(root, relative, CorruptWeightsError, fix)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
