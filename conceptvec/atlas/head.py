"""The folded LM head on the compute device, and each layer's neuron vectors beside it.

Folding puts the final norm into the unembedding once, ``W = center(W_U * g)``, so a neuron's
scores are one product ``v @ W.T`` (centring the rows of ``W`` is the same as centring ``v``
for LayerNorm models). On CPU a head too large to hold in float32 is folded chunk by chunk
from the stored (bf16) copy, which keeps peak memory near the size of the stored head.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from conceptvec.decoding import NormFold, residual_vectors
from conceptvec.errors import AtlasError
from conceptvec.models import Model
from conceptvec.models.disk_cache import cached_tensors

CPU_HEAD_BYTES = 256 << 20  # fold the whole head at once below this (float32 size)
CPU_HEAD_CHUNK_BYTES = 64 << 20  # above it, fold this many bytes of float32 rows at a time

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_compute(device: str, dtype: str, rank: int = 0) -> tuple[torch.device, torch.dtype]:
    """Return the device and compute dtype for ``auto|cpu|cuda`` and ``auto|bfloat16|float32``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AtlasError("--device cuda was asked for but torch sees no GPU; use --device cpu")
        dev = torch.device(device if ":" in device else f"cuda:{rank % torch.cuda.device_count()}")
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise AtlasError(f"unknown device {device!r}; use auto, cpu or cuda")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in _DTYPES:
        raise AtlasError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    return dev, _DTYPES[dtype]


class FoldedHead:
    """``[vocab, d_model]`` scores matrix on ``device`` in ``dtype``, yielded in vocab chunks."""

    def __init__(self, model: Model, device: torch.device, dtype: torch.dtype, fold: bool):
        self.model, self.device, self.dtype, self.fold = model, device, dtype, fold
        raw = model.unembedding()
        self.vocab, self.d_model = raw.shape
        self._hasher = ThreadPoolExecutor(1)
        self._hash = self._hasher.submit(_sha256_tensor, raw)
        self._hasher.shutdown(wait=False)
        self.norm = NormFold.of(model, fold)
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        whole = device.type == "cuda" or self.vocab * self.d_model * 4 <= CPU_HEAD_BYTES
        self._raw = None if whole else raw
        self._whole = self._fold(raw.to(device)) if whole else None

    @property
    def chunk_width(self) -> int:
        """The widest vocabulary chunk :meth:`chunks` yields."""
        if self._whole is not None:
            return self.vocab
        return max(1, min(self.vocab, CPU_HEAD_CHUNK_BYTES // (4 * self.d_model)))

    def sha256(self) -> str:
        """Return the sha256 of the stored unembedding's bytes (computed in the background)."""
        return self._hash.result()

    def _fold(self, w: torch.Tensor) -> torch.Tensor:
        return self.norm.rows(w).to(self.dtype).contiguous()

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a ``shape`` tensor on the head's device for ``name``, reused by this thread's
        later calls with the same name (its earlier contents are not kept).

        Score blocks are tens of MB; a fresh one per block page-faults for about as long as
        the GEMM that fills it takes (on CPU, where freed large blocks go back to the system).
        """
        local = self.__dict__.setdefault("_scratch", threading.local())
        buffers = local.__dict__.setdefault("buffers", {})
        size = math.prod(shape)
        buf = buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < size:
            buf = buffers[name] = torch.empty(size, dtype=dtype, device=self.device)
        return buf[:size].view(shape)

    def whole_rows(self) -> torch.Tensor | None:
        """Return the whole folded ``[vocab, d_model]`` head, or None if it is folded in chunks."""
        return self._whole

    def fold_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the folded rows ``[len(ids), d_model]`` of token ``ids``, bit for bit as
        :meth:`chunks` folds them (the fold works row by row)."""
        if self._whole is not None:
            return self._whole[ids]
        assert self._raw is not None  # kept exactly when the head is not held whole
        return self._fold(self._raw[ids.cpu()].to(self.device))

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_token_id, W[first:first + n])`` covering the vocabulary."""
        if self._whole is not None:
            yield 0, self._whole
            return
        raw, step = self._raw, self.chunk_width
        assert raw is not None  # kept exactly when the head is not held whole
        for start in range(0, self.vocab, step):
            yield start, self._fold(raw[start : start + step])


def folded_rows(model: Model, ids: list[int] | slice, fold: bool = True) -> torch.Tensor:
    """Return the folded unembedding rows of token ``ids``, ``[len(ids), d_model]`` float32."""
    return NormFold.of(model, fold).rows(model.unembedding()[ids])


def head_moments(
    model: Model, fold_norm: bool = True, chunk: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(mu [d_model], cov [d_model, d_model])`` of the folded unembedding rows.

    Computed once per model in float64 and kept (see :mod:`conceptvec.models.disk_cache`).
    """
    d, vocab = model.dims.d_model, model.dims.vocab

    def compute() -> dict[str, torch.Tensor]:
        total = torch.zeros(d, dtype=torch.float64)
        second = torch.zeros(d, d, dtype=torch.float64)
        for start in range(0, vocab, chunk):
            w = folded_rows(model, slice(start, start + chunk), fold_norm)
            total += w.sum(0, dtype=torch.float64)
            second += (w.T @ w).double()
        mu = total / vocab
        return {"mu": mu.float(), "cov": (second / vocab - torch.outer(mu, mu)).float()}

    shapes = {"mu": ((d,), torch.float32), "cov": ((d, d), torch.float32)}
    name = "head-moments" + ("-folded" if fold_norm else "")
    out = cached_tensors(model, name, compute, shapes, depends=(__name__,))
    return out["mu"], out["cov"]


def neuron_spread(
    model: Model,
    layer: int,
    matrix: str,
    fold_norm: bool = True,
    vectors: torch.Tensor | None = None,
    expert: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(mean [d_mlp], sd [d_mlp])`` of each neuron's scores over the vocabulary.

    A neuron ``v`` scores token ``t`` as ``v . w_t``; over the folded unembedding rows, with
    mean ``mu`` and covariance ``C`` (:func:`head_moments`), its scores have mean ``v . mu``
    and standard deviation ``sqrt(v' C v)`` (floored at 1e-15). Computed once per layer and
    kept. ``vectors``: the layer's :func:`residual_vectors`, when the caller has read them;
    ``expert``: one expert's neurons in a mixture of experts.
    """
    mu, cov = head_moments(model, fold_norm)

    def compute() -> dict[str, torch.Tensor]:
        v = (
            residual_vectors(model, layer, matrix, fold_norm, expert)
            if vectors is None
            else vectors
        )
        sd = ((v @ cov) * v).sum(1).clamp_min(1e-30).sqrt()
        return {"mean": v @ mu, "sd": sd}

    shape = ((model.dims.d_mlp,), torch.float32)
    name = f"spread-{matrix}-L{layer:03d}" + expert_tag(expert) + ("-folded" if fold_norm else "")
    depends = (__name__, residual_vectors.__module__)
    out = cached_tensors(model, name, compute, {"mean": shape, "sd": shape}, depends)
    return out["mean"], out["sd"]


def expert_tag(expert: int | None) -> str:
    """Return the part of a cache name naming one expert (empty in a dense model)."""
    return "" if expert is None else f"-E{expert:03d}"


def layer_vectors(
    model: Model,
    layer: int,
    matrix: str,
    head: FoldedHead,
    fold_norm: bool,
    expert: int | None = None,
):
    """Start reading one matrix's ``[d_mlp, d_model]`` neuron vectors (of one ``expert`` in a
    mixture of experts) for the head's device.

    Runs in a reader thread. On CPU it returns the finished float vectors. On CUDA it reads
    into pinned memory and starts the copy on a side stream, returning a :class:`Pending`
    that :meth:`Pending.result` finishes on the compute stream.
    """
    if head.device.type == "cpu":
        return residual_vectors(model, layer, matrix, fold_norm, expert).to(head.dtype)
    raw = model.neurons(layer, matrix, pin_memory=True, expert=expert)
    gain = model.mlp_out_gain(layer) if fold_norm and matrix == "down" else None
    stream = head.copy_stream
    with torch.cuda.stream(stream):
        w = raw.to(head.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    return Pending(w, done, gain, head.dtype)


class Pending:
    """A matrix on its way to the GPU: finish it on the stream that will use it."""

    def __init__(self, w: torch.Tensor, done, gain: torch.Tensor | None, dtype: torch.dtype):
        self.w, self.done, self.gain, self.dtype = w, done, gain, dtype

    def result(self) -> torch.Tensor:
        """Return the ``[d_mlp, d_model]`` vectors in the compute dtype, norm gain applied."""
        stream = torch.cuda.current_stream(self.w.device)
        stream.wait_event(self.done)
        self.w.record_stream(stream)
        w = self.w
        if self.gain is not None:
            w = w.float() * self.gain.to(w.device)
        return w.to(self.dtype).contiguous()


HASH_BLOCK = 64 << 20


def _sha256_tensor(t: torch.Tensor) -> str:
    """Return the sha256 of the sha256s of the tensor's 64 MiB blocks (hashed in parallel).

    A 1 GB bf16 head hashes in about 0.1 s on 16 cores instead of 0.6 s on one; the
    manifest names this as ``sha256-of-64MiB-blocks``.
    """
    import os

    data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
    blocks = [data[i : i + HASH_BLOCK] for i in range(0, len(data), HASH_BLOCK)] or [data]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = pool.map(lambda b: hashlib.sha256(b).digest(), blocks)
        return hashlib.sha256(b"".join(digests)).hexdigest()
