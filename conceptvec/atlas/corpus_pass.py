"""``add_activations``: stream a corpus through the model once and add, to an atlas folder,
what every neuron of the chosen layers fires on (its activation part).

Read-only hooks on every chosen layer's MLP hidden activation (the machinery of
:mod:`conceptvec.activations.read`) fold each batch into a :class:`LayerStats` per layer, so
no activation is kept beyond its batch. The corpus is read in chunks of whole texts; after a
chunk, at most once a minute, the running state is checkpointed (written to a temporary name,
renamed, its sha256 in the activation manifest), so an interrupted run resumes from the last
checkpoint after checking that the texts it skips hash to what it read before. The
activation part lives in ``ATLAS/activations/``::

    activations/manifest.json        model identity, corpus identity (chained sha256, texts,
                                     tokens), settings, progress, per-layer file + sha256
    activations/L029.safetensors     exemplars, density, mean, std, quantiles of one layer
    activations/state.safetensors    the running state of an unfinished run
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptvec.errors import AtlasError, BadTextError, HookNeverFiredError
from conceptvec.results import Result

from . import store
from .corpus import EMPTY_HASH, Corpus, chain
from .exemplars import Batch, LayerStats, StatsConfig, reservoir

ACT_DIR = "activations"
ACT_SCHEMA = "conceptvec.activations"
ACT_VERSION = 1
STATE = "state.safetensors"
CHECKPOINT_SECONDS = 60.0


def layer_file(layer: int) -> str:
    """Return the activation file name of ``layer`` (``L029.safetensors``)."""
    return f"L{layer:03d}.safetensors"


@dataclass
class CorpusReport(Result):
    """What :func:`add_activations` did."""

    out: Path
    layers: list[int]
    texts: int = 0
    tokens: int = 0
    sha256: str = ""
    resumed_from_tokens: int = 0
    reused: bool = False
    """True when the atlas already held this corpus's activation part (nothing was run)."""
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        how = "reused" if self.reused else f"{self.seconds.get('total', 0):.1f} s"
        return (
            f"activations: {self.tokens} tokens of {self.texts} texts over layers "
            f"{self.layers[0]}-{self.layers[-1]} ({how})"
        )


def add_activations(atlas_dir: str | Path, corpus: str | Corpus, **kw: Any) -> CorpusReport:
    """Stream ``corpus`` through the model of the atlas in ``atlas_dir`` and write its
    activation part there, holding the folder's lock; return a :class:`CorpusReport`.

    Keywords are those of :func:`corpus_pass` (``model``, ``layers``, ``stats``,
    ``max_tokens``, ``batch_tokens``, ``chunk_tokens``, ``max_texts``, ``overwrite``,
    ``progress``).
    """
    root = Path(atlas_dir).expanduser()
    if not (root / store.MANIFEST).is_file():
        raise AtlasError(f"{root} is not an atlas folder; make one with `conceptvec map MODEL`")
    handle = store.lock_folder(root)
    try:
        return corpus_pass(root, corpus, **kw)
    finally:
        store.unlock_folder(handle)


def corpus_pass(
    atlas_dir: str | Path,
    corpus: str | Corpus,
    *,
    model: Any = None,
    layers: list[int] | None = None,
    stats: StatsConfig | None = None,
    max_tokens: int = 128,
    batch_tokens: int = 4096,
    chunk_tokens: int = 1 << 16,
    max_texts: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusReport:
    """Run the corpus pass of :func:`add_activations` (the caller holds the folder's lock).

    ``model`` defaults to the one the atlas was made from; ``layers`` to the atlas's layers.
    Texts longer than ``max_tokens`` (BOS included) are read in consecutive windows; batches
    hold about ``batch_tokens`` tokens. A finished part for the same corpus and settings is
    kept as it is; one for another corpus or settings is refused unless ``overwrite``.
    """
    from conceptvec.models.backends import resolve

    t0 = time.perf_counter()
    root = Path(atlas_dir).expanduser()
    weights = store.check_manifest(
        store.read_json(root / store.MANIFEST, "manifest"), root / store.MANIFEST
    )
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(str(corpus))
    corpus.check()
    stats = stats or StatsConfig()
    if stats.k < 1 or stats.window < 0 or stats.sample < 1 or stats.threshold < 0:
        raise AtlasError("k, sample must be at least 1 and window, threshold at least 0")
    target = resolve(model if model is not None else weights["location"])
    d = target.model.dims
    if d.d_mlp != weights["dims"]["d_mlp"] or d.n_layers != weights["dims"]["n_layers"]:
        raise AtlasError(f"the model's MLP shape does not match the atlas in {root}")
    layers = sorted(set(layers if layers is not None else weights_layers(weights)))
    if not layers or not all(0 <= x < d.n_layers for x in layers):
        raise AtlasError(f"layers must be within 0..{d.n_layers - 1}; give --layers")
    tok = target.tokenizer
    prefix = target.prefix
    limit = target.model.context_length
    max_tokens = min(max_tokens, limit) if limit else max_tokens
    if max_tokens <= len(prefix) + 1:
        raise AtlasError(f"max_tokens must be above {len(prefix) + 1}, not {max_tokens}")
    settings = {
        **stats.to_dict(),
        "max_tokens": max_tokens,
        "chunk_tokens": chunk_tokens,
        "max_texts": max_texts,
        "bos": prefix,
    }
    want = {
        "schema": ACT_SCHEMA,
        "schema_version": ACT_VERSION,
        "atlas": store.identity(weights),
        "source": corpus.describe(),
        "settings": settings,
        "layers": layers,
    }
    folder = root / ACT_DIR
    report = CorpusReport(out=root, layers=layers)
    old = _previous(folder, want, overwrite)
    if old is not None and old.get("complete"):
        digest, n_texts = _hash_only(corpus, max_texts)
        if digest == old["corpus"]["sha256"]:
            report.texts, report.tokens = n_texts, old["corpus"]["tokens"]
            report.sha256, report.reused = digest, True
            return report
        if not overwrite:
            raise AtlasError(
                f"{folder} holds activations of another corpus (sha256 differs) under the same "
                "source name; pass --overwrite to replace them"
            )
        old = None
    folder.mkdir(parents=True, exist_ok=True)
    if old is None:
        _clear(folder)
    layer_stats = {L: LayerStats(d.d_mlp, stats, target.device) for L in layers}
    progress_rec = (old or {}).get("progress") or {"texts": 0, "tokens": 0, "hash": EMPTY_HASH}
    if old is not None and progress_rec["tokens"]:
        _load_state(folder, progress_rec, layer_stats)
        report.resumed_from_tokens = progress_rec["tokens"]
    manifest = {**want, "complete": False, "progress": progress_rec, "shards": {}}
    store.write_json(folder / "manifest.json", manifest)

    run = _Pass(target, layer_stats, prefix, max_tokens, batch_tokens)
    bar = _bar(progress, target.model.name)
    last_save = time.perf_counter()
    texts_done, tokens_done, digest = progress_rec["texts"], progress_rec["tokens"], EMPTY_HASH
    skip = progress_rec["texts"]
    bar.update(tokens_done)
    for texts, ids in _chunks(corpus, tok, chunk_tokens, max_texts):
        if skip:
            take = texts[:skip]
            digest = chain(digest, take)
            skip -= len(take)
            if skip == 0 and digest != progress_rec["hash"]:
                raise AtlasError(
                    f"the corpus changed since the interrupted run into {root} (its first "
                    f"{texts_done} texts hash differently); pass --overwrite to start over"
                )
            if len(take) < len(texts):
                raise AtlasError(
                    "the corpus is cut into other chunks than the interrupted run's (another "
                    "tokenizer?); pass --overwrite to start over"
                )
            continue
        n = run.chunk(ids, texts_done, tokens_done)
        digest = chain(digest, texts)
        texts_done += len(texts)
        tokens_done += n
        bar.update(n)
        if time.perf_counter() - last_save >= CHECKPOINT_SECONDS:
            rec = {"texts": texts_done, "tokens": tokens_done, "hash": digest}
            _save_state(folder, manifest, rec, layer_stats)
            last_save = time.perf_counter()
    bar.close()
    if skip:
        raise AtlasError(f"the corpus now has fewer texts than the interrupted run read; {root}")
    if tokens_done == 0:
        raise BadTextError(f"the corpus {corpus.source!r} holds no tokens; give some text")
    shards = {}
    for L, s in layer_stats.items():
        data = encode_tensors(s.finish(), {"layer": str(L)})
        store.atomic_write(folder / layer_file(L), data)
        shards[f"L{L:03d}"] = {
            "layer": L,
            "file": layer_file(L),
            "sha256": store.sha256_bytes(data),
        }
    manifest.update(
        complete=True,
        shards=shards,
        progress={"texts": texts_done, "tokens": tokens_done, "hash": digest},
        corpus={"sha256": digest, "texts": texts_done, "tokens": tokens_done},
    )
    store.write_json(folder / "manifest.json", manifest)
    (folder / STATE).unlink(missing_ok=True)
    report.texts, report.tokens, report.sha256 = texts_done, tokens_done, digest
    report.seconds["total"] = time.perf_counter() - t0
    return report


def weights_layers(weights: dict[str, Any]) -> list[int]:
    """Return the layers the weight atlas holds (every layer when it holds none yet)."""
    have = sorted({e["layer"] for e in weights["shards"].values()})
    return have or list(range(weights["dims"]["n_layers"]))


# ------------------------------------------------------------------------ folder state
def _previous(folder: Path, want: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    if overwrite or not path.exists():
        return None
    old = store.read_json(path, "activation manifest")
    same = isinstance(old, dict) and all(old.get(key) == want[key] for key in want)
    if same:
        return old
    why = next((key for key in want if not isinstance(old, dict) or old.get(key) != want[key]), "?")
    raise AtlasError(
        f"{folder} holds activations made another way ({why} differs); pass --overwrite to "
        "replace them"
    )


def _clear(folder: Path) -> None:
    """Remove our own activation files from ``folder`` (nothing else)."""
    for path in folder.glob("L[0-9][0-9][0-9].safetensors"):
        path.unlink()
    for name in (STATE, "manifest.json"):
        (folder / name).unlink(missing_ok=True)
    for path in folder.glob(".*.tmp"):
        path.unlink()


def _save_state(folder: Path, manifest: dict, rec: dict, layer_stats: dict) -> None:
    tensors = {
        f"L{L:03d}.{name}": t.cpu() for L, s in layer_stats.items() for name, t in s.t.items()
    }
    data = encode_tensors(tensors, {})
    store.atomic_write(folder / STATE, data)
    manifest["progress"] = {**rec, "state": {"file": STATE, "sha256": store.sha256_bytes(data)}}
    store.write_json(folder / "manifest.json", manifest)


def _load_state(folder: Path, rec: dict, layer_stats: dict) -> None:
    from safetensors.torch import load

    path = folder / STATE
    want = (rec.get("state") or {}).get("sha256")
    data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    if store.sha256_bytes(data) != want:
        raise AtlasError(f"{path} is missing or damaged; pass --overwrite to start over")
    tensors = load(data)
    for L, s in layer_stats.items():
        s.load({name: tensors[f"L{L:03d}.{name}"] for name in s.t})


def _hash_only(corpus: Corpus, max_texts: int | None) -> tuple[str, int]:
    texts = list(_limited(corpus.texts(), max_texts))
    return chain(EMPTY_HASH, texts), len(texts)


def _limited(texts: Iterator[str], max_texts: int | None) -> Iterator[str]:
    for n, t in enumerate(texts):
        if max_texts is not None and n >= max_texts:
            return
        yield t


def _chunks(
    corpus: Corpus, tok: Any, chunk_tokens: int, max_texts: int | None
) -> Iterator[tuple[list[str], list[list[int]]]]:
    """Yield ``(texts, token ids per text)`` in chunks of whole texts of ~``chunk_tokens``.

    The chain hash runs over the texts as chunks, so chunks must be the same on every run:
    they depend only on the texts and the tokenizer.
    """
    texts: list[str] = []
    ids: list[list[int]] = []
    size = 0
    for text in _limited(corpus.texts(), max_texts):
        row = list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
        texts.append(text)
        ids.append(row)
        size += len(row)
        if size >= chunk_tokens:
            yield texts, ids
            texts, ids, size = [], [], 0
    if texts:
        yield texts, ids


def _bar(on: bool, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(unit="tok", unit_scale=True, desc=f"corpus {name}", disable=not on, file=sys.stderr)


# ------------------------------------------------------------------------ the pass
class _Pass:
    """Runs chunks of tokenized texts through the model with one reader per layer."""

    def __init__(self, target, layer_stats: dict[int, LayerStats], prefix, max_tokens, budget):
        from conceptvec.activations.read import _Readers
        from conceptvec.interventions.apply import pad_id

        self.target, self.stats, self.prefix = target, layer_stats, list(prefix)
        self.step = max_tokens - len(prefix)
        self.budget = max(budget, max_tokens)
        self.pad = pad_id(target) or 0
        self.sample = next(iter(layer_stats.values())).cfg.sample
        stats = layer_stats

        class Readers(_Readers):
            batch: Batch | None = None

            def keep(self, layer: int, x: torch.Tensor) -> None:
                self.fired[layer] += 1
                self.seen[layer] = x[:0]  # a marker: nothing is kept beyond the batch
                assert self.batch is not None
                stats[layer].update(x, self.batch)

        self.readers = Readers({L: [] for L in layer_stats})

    def chunk(self, ids: list[list[int]], first_text: int, seen: int) -> int:
        """Run one chunk (``first_text``: the corpus index of its first text; ``seen``: tokens
        read before it); return its token count."""
        from conceptvec.interventions.apply import forward_with

        hooks = {L: self.readers.fn(L) for L in self.stats}
        n_all = 0
        with torch.no_grad():
            for batch, ids_t, mask_t in self.batches(ids, first_text, seen):
                n_all += int(batch.mask.sum())
                self.readers.batch = batch.to(self.target.device)
                self.readers.seen.clear()
                forward_with(self.target, ids_t, mask_t, hooks)
                missing = [L for L in self.stats if L not in self.readers.seen]
                if missing:
                    raise HookNeverFiredError(
                        f"the reader on layer {missing[0]} never fired in a forward pass of "
                        f"{self.target.model.name}; is the model's MLP where its spec says?"
                    )
        return n_all

    def batches(
        self, ids: list[list[int]], first_text: int, seen: int
    ) -> Iterator[tuple[Batch, torch.Tensor, torch.Tensor]]:
        """Yield the chunk's padded batches (windows of similar length together) with their
        ``input_ids`` and attention mask on the model's device."""
        windows = [
            (first_text + i, s, row[s : s + self.step])
            for i, row in enumerate(ids)
            for s in range(0, len(row), self.step)
        ]
        windows.sort(key=lambda w: -len(w[2]))
        start = 0
        while start < len(windows):
            width = len(self.prefix) + len(windows[start][2])
            rows = max(1, self.budget // width)
            group = windows[start : start + rows]
            start += len(group)
            batch = self._batch(group, width, seen)
            seen += int(batch[0].mask.sum())
            yield batch

    def _batch(self, group, width: int, seen: int) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        p = len(self.prefix)
        ids = torch.full((len(group), width), self.pad, dtype=torch.long)
        attn = torch.zeros((len(group), width), dtype=torch.long)
        lo = torch.full((len(group),), p, dtype=torch.long)
        hi = torch.tensor([p + len(g[2]) for g in group], dtype=torch.long)
        text_of = torch.tensor([g[0] for g in group], dtype=torch.long)
        start_of = torch.tensor([g[1] for g in group], dtype=torch.long)
        for r, (_, _, chunk) in enumerate(group):
            ids[r, : p + len(chunk)] = torch.tensor(self.prefix + chunk, dtype=torch.long)
            attn[r, : p + len(chunk)] = 1
        mask = attn.bool()
        mask[:, :p] = False
        row, col = mask.nonzero(as_tuple=True)
        n = len(row)
        rows, slots = reservoir(seen, n, self.sample, seed=seen * 2654435761 % (1 << 62) + 17)
        batch = Batch(
            ids=ids,
            mask=mask,
            text=text_of[row],
            pos=start_of[row] + col - p,
            row=row,
            col=col,
            lo=lo,
            hi=hi,
            sample_rows=rows,
            sample_slots=slots,
        )
        dev = self.target.device
        return batch, ids.to(dev), attn.to(dev)


def read_manifest(root: Path) -> dict[str, Any] | None:
    """Return the activation manifest of the atlas in ``root`` (None if it has none)."""
    path = root / ACT_DIR / "manifest.json"
    if not path.exists():
        return None
    data = store.read_json(path, "activation manifest")
    if not isinstance(data, dict) or data.get("schema") != ACT_SCHEMA:
        raise store.CorruptAtlasError(f"{path} is not an activation manifest; remake it")
    return data


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.int32: "I32"}


def encode_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """Return safetensors bytes with sorted keys (the same tensors give the same bytes)."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        blob = t.numpy().tobytes()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])
