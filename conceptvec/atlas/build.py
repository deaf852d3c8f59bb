"""``build_atlas``: decode every MLP neuron of a model through the LM head, layer by layer.

The weights stream from disk one matrix at a time (the model is never built). The folded
unembedding ``W = center(W_U * g)`` stays on the device; each layer's neurons are projected
in row chunks, ``scores = V @ W.T``, and only the top-k and bottom-k of each row are kept
(:mod:`conceptvec.atlas.topk`). Shards are written by a background thread while the next
layer computes; a journal line after each shard makes an interrupted run resumable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conceptvec.errors import AtlasError
from conceptvec.models import Model, load
from conceptvec.neurons import check_matrix, parse_layers
from conceptvec.results import Result
from conceptvec.types import ModelSource

from . import store
from .head import FoldedHead, Pending, layer_vectors, resolve_compute
from .identity import atlas_identity, vocab_texts
from .topk import canonical_order, merge_candidates, top_bottom
from .twopass import (
    TwoPassStats,
    choose_precision,
    exact_gemms,
    full_scores,
    project_two_pass,
)

if TYPE_CHECKING:
    from conceptvec.atlas.corpus_pass import CorpusReport

log = logging.getLogger(__name__)

CPU_SCORE_BYTES = 64 << 20  # one [rows, vocab chunk] float32 score block on CPU
GPU_SCORE_BYTES = 4 << 30


def read_ahead_gpu() -> int:
    """Return how many matrices are read (and shards written) at once when mapping on a GPU.

    4 by default; ``CONCEPTVEC_READ_AHEAD`` overrides it (more helps on slow disks).
    """
    try:
        return max(1, int(os.environ.get("CONCEPTVEC_READ_AHEAD", "4")))
    except ValueError:
        return 4


@dataclass
class BuildReport(Result):
    """What :func:`build_atlas` did: where the atlas is and how long each phase took."""

    out: Path
    shards_written: list[str] = field(default_factory=list)
    shards_reused: list[str] = field(default_factory=list)
    shards_remade: list[str] = field(default_factory=list)
    complete: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    precision: str = "float32"
    """``float32`` (every score computed in float32) or ``two-pass`` (bf16 scores, candidates
    rescored in float32 and proved exact; the atlas is the same)."""
    two_pass: TwoPassStats = field(default_factory=TwoPassStats)
    """Neurons the two-pass selection proved exact, and how many it redid in float32."""
    activations: CorpusReport | None = None
    """The corpus pass's :class:`~conceptvec.atlas.corpus_pass.CorpusReport` (with ``corpus``)."""

    def __str__(self) -> str:
        s = self.seconds
        return (
            f"atlas: {self.out}  ({'complete' if self.complete else 'incomplete'}; "
            f"{len(self.shards_written)} shards written, {len(self.shards_reused)} reused, "
            f"{len(self.shards_remade)} remade; {s.get('total', 0.0):.1f} s on {self.device} "
            f"in {self.dtype})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary: every field by its name, plus the counts
        ``written``, ``reused`` and ``remade`` that ``conceptvec map --json`` has printed."""
        data = super().to_dict()
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        data.update(
            written=len(self.shards_written),
            reused=len(self.shards_reused),
            remade=self.shards_remade,
        )
        return data


def build_atlas(
    model: ModelSource,
    out: str | Path,
    *,
    matrices: tuple[str, ...] | list[str] | str | None = None,
    k: int = 20,
    layers: str | list[int] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    fold_norm: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    precision: str = "auto",
    corpus: Any = None,
    corpus_options: dict[str, Any] | None = None,
) -> BuildReport:
    """Map ``model``'s MLP neurons into an atlas folder ``out``; return a :class:`BuildReport`.

    ``model`` is anything :func:`conceptvec.load` accepts; ``matrices`` defaults to all the
    model has (``up, gate, down``, or ``up, down`` for an ungated MLP). Runs under ``torchrun`` split the
    layers across ranks (gloo on CPU, NCCL on CUDA); rank 0 writes the manifest. A folder left
    by an interrupted run with the same model and recipe is resumed; one made from another
    model or recipe is refused unless ``overwrite``. ``precision``: ``auto`` (two-pass where it
    is exact and faster: float32 on CPU), ``float32`` or ``two-pass`` (see
    :mod:`conceptvec.atlas.twopass`); either gives the same atlas. ``corpus`` (a path, or a
    :class:`~conceptvec.atlas.corpus.Corpus`) adds the activation part: what each neuron
    fires on over that corpus (:func:`~conceptvec.atlas.corpus_pass.corpus_pass`, which takes
    ``corpus_options``).
    """
    t0 = time.perf_counter()
    bound_malloc()
    model = model if isinstance(model, Model) else load(model)
    t_load = time.perf_counter()
    matrices = _matrices(matrices, model)
    if not 1 <= k <= model.dims.vocab:
        raise AtlasError(f"k must be between 1 and the vocabulary size {model.dims.vocab}")
    layers = _layers(layers, model.dims.n_layers)
    rank, world, joined = _distributed()
    dev, cdtype = resolve_compute(device, dtype, rank)
    root = Path(out).expanduser()
    report = BuildReport(out=root, device=str(dev), dtype=str(cdtype).replace("torch.", ""))

    head = FoldedHead(model, dev, cdtype, fold_norm)  # hashes W_U in a thread meanwhile
    fast = choose_precision(precision, head, k)
    report.precision = "float32" if fast is None else "two-pass"
    manifest = atlas_identity(model, k=k, dtype=report.dtype, fold_norm=fold_norm)
    manifest["unembedding_sha256"] = head.sha256()
    t_head = time.perf_counter()
    manifest["compute"] = {
        "device": dev.type,
        "dtype": report.dtype,
        "world_size": world,
        "precision": report.precision,
    }
    # a mixture of experts gets a shard per expert
    experts: list[int | None] = [*range(model.dims.n_experts)] or [None]
    items = [store.shard_name(lay, m, e) for lay in layers for e in experts for m in matrices]

    held: dict[str, tuple[int, Path] | None] = {}

    def take_lock() -> None:  # rank 0 holds the folder's lock (the kernel drops it if we die)
        _check_writable(root)
        held["lock"] = store.lock_folder(root)

    _collective(rank, world, take_lock)
    with contextlib.closing(_Release(held)):
        plan = _collective(rank, world, lambda: _prepare(root, model, manifest, items, overwrite))
        done = plan["done"]
        report.shards_reused = sorted(name for name in done if name in items)  # of this run
        report.shards_remade = plan["remade"]
        report.seconds["load"] = t_load - t0
        report.seconds["head"] = t_head - t_load
        report.seconds["setup"] = time.perf_counter() - t0

        todo = [(lay, m, e) for lay in layers[rank::world] for e in experts for m in matrices]
        todo = [unit for unit in todo if store.shard_name(*unit) not in done]
        t1 = time.perf_counter()
        work = (head, fast, report.two_pass)
        report.shards_written = _run(model, work, root, todo, k, fold_norm, rank, progress)
        if world > 1:  # every rank reports what all of them wrote
            import torch.distributed as dist

            lists: list[Any] = [None] * world
            dist.all_gather_object(lists, report.shards_written)
            report.shards_written = sorted(name for names in lists for name in names)
            counts: list[Any] = [None] * world
            dist.all_gather_object(counts, report.two_pass)
            report.two_pass = TwoPassStats()
            for c in counts:
                report.two_pass.add(c)
        report.seconds["project"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        report.complete = _collective(rank, world, lambda: _finish(root, items))
        _leave(joined)
        report.seconds["finish"] = time.perf_counter() - t2
        if corpus is not None and rank == 0:
            from .corpus_pass import corpus_pass

            opts = {"progress": progress, "overwrite": overwrite, **(corpus_options or {})}
            report.activations = corpus_pass(root, corpus, model=model, layers=layers, **opts)
        report.seconds["total"] = time.perf_counter() - t0
        return report


class _Release:
    def __init__(self, held: dict[str, tuple[int, Path] | None]):
        self.held = held

    def close(self) -> None:
        store.unlock_folder(self.held.pop("lock", None))


def _matrices(matrices, model: Model) -> list[str]:
    if matrices is None:
        return ["up", "gate", "down"] if model.spec.gated else ["up", "down"]
    if isinstance(matrices, str):
        matrices = [m for m in matrices.replace(" ", "").split(",") if m]
    if not matrices:
        raise AtlasError("no matrices given; use some of up, gate, down")
    out = []
    for m in matrices:
        m = check_matrix(m, model.spec.gated)
        if m not in out:
            out.append(m)
    return out


def bound_malloc() -> None:
    """Make glibc return freed large buffers to the system at once (Linux only; no-op elsewhere).

    Mapping streams one 30-250 MB matrix after another through two threads; glibc's adaptive
    mmap threshold would keep such buffers in per-thread heaps, and peak memory then grows
    by a gigabyte on a 1B model. A fixed 1 MiB threshold keeps it near the working set.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _layers(layers, n_layers: int) -> list[int]:
    layers = parse_layers(layers)
    if layers is None:
        return list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= int(layer) < n_layers]
    if bad:
        raise AtlasError(f"layer {bad[0]} is out of range; this model has layers 0..{n_layers - 1}")
    return sorted({int(layer) for layer in layers})


def _distributed() -> tuple[int, int, bool]:
    """Return ``(rank, world_size, joined)``, joining the torchrun process group if there is one.

    ``joined`` is True when this call created the group (then :func:`_leave` destroys it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    joined = not dist.is_initialized()
    if joined:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), joined


def _leave(joined: bool) -> None:
    """Destroy the process group this run created, after every rank is done.

    Left alive, its worker threads are still running when the interpreter exits, and a rank
    can abort ("terminate called without an active exception") after finishing its work.
    """
    if joined:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _collective(rank: int, world: int, fn):
    """Run ``fn`` on rank 0 and hand its result (or its error) to every rank."""
    if world == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # re-raised on every rank below
            box[0] = ("error", e)
    dist.barrier()
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


# ---------------------------------------------------------------------------- folder state
def _prepare(
    root: Path, model: Model, manifest: dict, items: list[str], overwrite: bool
) -> dict[str, Any]:
    """Make ``root`` ready: refuse, clear or resume it. Return the shards already done.

    The caller holds the folder's lock (:func:`store.lock_folder`).
    """
    store.refuse_links(root)
    old_path = root / store.MANIFEST
    done: dict[str, dict] = {}
    remade: list[str] = []
    texts = vocab_texts(model)
    manifest["vocab_sha256"] = store.sha256_bytes(texts)
    store.remove_stale_temporaries(root)
    if old_path.exists() and not overwrite:
        old = store.read_json(old_path, "manifest")
        if not isinstance(old, dict):
            raise store.CorruptAtlasError(f"{old_path} is not a manifest; pass --overwrite")
        why = store.identity_mismatch(store.identity(old), store.identity(manifest))
        if why:
            raise AtlasError(
                f"{root} holds an atlas of {old.get('model_name', '?')} made another way ({why}); "
                "pass --overwrite to replace it or choose another --out"
            )
        shards = old.get("shards")
        recorded = {**(shards if isinstance(shards, dict) else {}), **store.read_journals(root)}
        for name, entry in recorded.items():
            if store.shard_entry_problem(name, entry, model.dims.n_layers) is not None:
                if name in items:  # a record this run would write: remake it
                    remade.append(name)
                log.warning("dropping foreign shard record %r", name)
                continue
            path = store.shard_path(root, name)
            if (
                path.is_file()
                and not path.is_symlink()
                and store.sha256_file(path) == entry["sha256"]
            ):
                done[name] = entry
            else:
                remade.append(name)
                log.warning("shard %s is damaged or missing; remaking it", name)
        manifest["layers"] = [x for x in old.get("layers", []) if type(x) is int]
        manifest["matrices"] = [m for m in old.get("matrices", []) if m in ("up", "gate", "down")]
    elif old_path.exists() or _has_atlas_files(root) or _leftovers(root, manifest):
        if not overwrite and not _leftovers(root, manifest):
            raise AtlasError(
                f"{root} has files from an unfinished atlas but no manifest; pass --overwrite"
            )
        _clear(root)
    elif _others(root):
        raise AtlasError(
            f"{root} is not empty and holds no conceptvec atlas; choose a new or empty --out"
        )
    vocab_path = root / store.VOCAB
    if not vocab_path.exists() or store.sha256_file(vocab_path) != manifest["vocab_sha256"]:
        store.atomic_write(vocab_path, texts)
    _write_manifest(root, manifest, done, items)
    (root / store.SHARD_DIR).mkdir(parents=True, exist_ok=True)  # after the manifest exists
    return {"done": set(done), "remade": remade}


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / PROBE
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise AtlasError(
            f"cannot write to {root} ({e.strerror or e}); choose a writable --out"
        ) from None


PROBE = ".conceptvec-write-test"


def _others(root: Path) -> list[str]:
    """Return the names in ``root`` that no atlas run writes."""
    ours = {store.LOCK, PROBE}
    return [p.name for p in root.iterdir() if p.name not in ours] if root.exists() else []


def _has_atlas_files(root: Path) -> bool:
    return (root / store.SHARD_DIR).exists() or any(root.glob(store.JOURNAL_GLOB))


def _leftovers(root: Path, manifest: dict) -> bool:
    """True when ``root`` holds only what this run's setup writes before its manifest (the
    very vocab.json it would write, an empty shards/ folder): a run killed there is started
    afresh without asking for --overwrite. A vocab.json of other bytes is not ours."""
    shards = root / store.SHARD_DIR
    if shards.is_dir() and (shards.is_symlink() or any(shards.iterdir())):
        return False
    if not set(_others(root)) <= {store.VOCAB, store.SHARD_DIR}:
        return False
    vocab = root / store.VOCAB
    if not vocab.exists() and not vocab.is_symlink():
        return True
    return (
        vocab.is_file()
        and not vocab.is_symlink()
        and store.sha256_file(vocab) == manifest["vocab_sha256"]
    )


def _clear(root: Path) -> None:
    """Remove an old atlas's own files from ``root`` (nothing else)."""
    shutil.rmtree(root / store.SHARD_DIR, ignore_errors=True)
    for name in (store.MANIFEST, store.VOCAB):
        (root / name).unlink(missing_ok=True)
    for path in root.glob(store.JOURNAL_GLOB):
        path.unlink()


def _write_manifest(root: Path, manifest: dict, shards: dict, items: list[str]) -> bool:
    manifest["shards"] = dict(sorted(shards.items()))
    present = {(e["layer"], e["matrix"]) for e in shards.values()}
    manifest["layers"] = sorted({layer for layer, _ in present} | set(manifest.get("layers", [])))
    order = {m: i for i, m in enumerate(("up", "gate", "down"))}
    manifest["matrices"] = sorted(
        {m for _, m in present} | set(manifest.get("matrices", [])),
        key=lambda m: order.get(m, len(order)),
    )
    manifest["complete"] = all(name in shards for name in items)
    store.write_json(root / store.MANIFEST, manifest)
    for path in root.glob(store.JOURNAL_GLOB):  # merged into the manifest now
        path.unlink()
    return manifest["complete"]


def _finish(root: Path, items: list[str]) -> bool:
    manifest = store.read_json(root / store.MANIFEST, "manifest")
    shards = {**manifest.get("shards", {}), **store.read_journals(root)}
    return _write_manifest(root, manifest, shards, items)


# ------------------------------------------------------------------------------ the work
def _run(model, work, root, todo, k, fold_norm, rank, progress) -> list[str]:
    """Project every (layer, matrix) in ``todo``; read ahead and write shards in threads.

    On CPU one matrix is read ahead (the cores are busy with the GEMMs); on a GPU several
    are, so reading from disk, the host-to-device copies and the shard writes all overlap
    the projections.
    """
    if not todo:
        return []
    from tqdm.auto import tqdm

    head, fast, stats = work

    bar = tqdm(
        total=len(todo),
        unit="shard",
        desc=f"map {model.name}",
        disable=not progress or rank != 0,
        file=sys.stderr,
    )
    depth = 1 if head.device.type == "cpu" else read_ahead_gpu()
    written: list[str] = []
    pending: list[Future] = []
    with ThreadPoolExecutor(depth) as reader, ThreadPoolExecutor(depth) as writer:
        ahead: deque[Future] = deque()
        upcoming = iter(todo)
        try:
            for layer, matrix, expert in todo:
                while len(ahead) < depth:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        break
                    ahead.append(
                        reader.submit(layer_vectors, model, nxt[0], nxt[1], head, fold_norm, nxt[2])
                    )
                vectors = ahead.popleft().result()
                if isinstance(vectors, Pending):
                    vectors = vectors.result()
                extra: dict[str, object] = {}
                if fast is None:
                    result = project_top_bottom(vectors, head, k)
                else:
                    result, done = project_two_pass(vectors, fast, k, project_top_bottom)
                    stats.add(done)
                    extra["two_pass_fallback"] = done.fallback
                del vectors
                name = store.shard_name(layer, matrix, expert)
                if expert is not None:
                    extra["expert"] = expert
                args = (root, rank, name, layer, matrix, result, extra)
                pending.append(writer.submit(_write_shard, *args))
                pending = [f for f in pending if not _done(f)]
                written.append(name)
                bar.update(1)
            for f in pending:
                f.result()
        finally:
            for f in ahead:
                f.cancel()
            bar.close()
    return written


def _done(f: Future) -> bool:
    if f.done():
        f.result()  # re-raise a failed write here, in the main thread
        return True
    return False


def project_top_bottom(vectors: torch.Tensor, head: FoldedHead, k: int) -> dict[str, torch.Tensor]:
    """Return top/bottom ``k`` ids and scores of ``vectors @ W.T`` for ``[n, d_model]`` vectors.

    Each vocabulary chunk of the head is folded once; rows go through it in blocks whose
    ``[rows, chunk]`` score matrix fits the device's budget; candidates merge at the end.
    Rows are ordered by score, then by token id (:func:`canonical_order`): one candidate more
    than ``k`` shows a tie at the k-th place, and such a row is settled from its full scores.
    A float32 atlas is float32 on a GPU too: no TF32 (:func:`twopass.exact_gemms`).
    """
    if vectors.dtype != torch.float32:
        return _project(vectors, head, k)
    with exact_gemms():
        return _project(vectors, head, k)


def _project(vectors: torch.Tensor, head: FoldedHead, k: int) -> dict[str, torch.Tensor]:
    vectors = vectors.contiguous()  # the layout two-pass rescoring uses (the bits may differ)
    n = vectors.shape[0]
    cpu = vectors.device.type == "cpu"  # (the CUDA caching allocator reuses blocks itself)
    budget = CPU_SCORE_BYTES if cpu else GPU_SCORE_BYTES
    rows = max(1, min(n, budget // (head.chunk_width * vectors.element_size())))
    keep = min(k + 1, head.vocab)
    starts = range(0, n, rows)
    parts: list[list] = [[] for _ in starts]
    for offset, w in head.chunks():
        for j, start in enumerate(starts):
            block = vectors[start : start + rows]
            buf = head.scratch("scores", (len(block), w.shape[0]), vectors.dtype) if cpu else None
            tv, ti, bv, bi = top_bottom(full_scores(block, w, out=buf), keep)
            parts[j].append((tv, ti + offset, bv, bi + offset))
        del w  # let the next chunk be folded without this one alive
    merged = [merge_candidates(p, keep) for p in parts]
    tv, ti, bv, bi = (torch.cat([m[j] for m in merged]) for j in range(4))
    tv, ti = canonical_order(tv, ti, keep, largest=True)
    bv, bi = canonical_order(bv, bi, keep, largest=False)
    if keep > k:  # the (k+1)-th equal to the k-th: more tokens may tie there
        tied = ((tv[:, k] == tv[:, k - 1]) | (bv[:, k] == bv[:, k - 1])).nonzero().flatten()
        if len(tied):
            tv, ti, bv, bi = _settle_ties(vectors, head, tied, (tv, ti, bv, bi))
    out = (ti[:, :k], tv[:, :k], bi[:, :k], bv[:, :k])
    return dict(zip(store.SHARD_TENSORS, out))


def _settle_ties(vectors, head: FoldedHead, rows: torch.Tensor, picked):
    """Return ``picked`` with ``rows`` redone from their full scores: a stable sort keeps
    the lower token id first among equal scores."""
    full = torch.cat([full_scores(vectors[rows], w) for _, w in head.chunks()], dim=1)
    tv, ti, bv, bi = (t.clone() for t in picked)
    keep = tv.shape[1]
    top = full.sort(dim=1, descending=True, stable=True)
    bottom = full.sort(dim=1, stable=True)
    tv[rows], ti[rows] = top.values[:, :keep], top.indices[:, :keep].to(ti.dtype)
    bv[rows], bi[rows] = bottom.values[:, :keep], bottom.indices[:, :keep].to(bi.dtype)
    return tv, ti, bv, bi


def _write_shard(
    root: Path, rank: int, name: str, layer: int, matrix: str, result, extra: dict[str, object]
) -> None:
    result = {key: t.cpu() for key, t in result.items()}
    meta = {"layer": str(layer), "matrix": matrix}
    if "expert" in extra:
        meta["expert"] = str(extra["expert"])
    data = store.encode_shard(result, meta)
    path = store.shard_path(root, name)
    store.atomic_write(path, data)
    entry = {
        "name": name,
        "file": str(path.relative_to(root)),
        "layer": layer,
        "matrix": matrix,
        "sha256": store.sha256_bytes(data),
        "bytes": len(data),
        **extra,
    }
    store.append_journal(root, rank, entry)
