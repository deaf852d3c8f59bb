"""Write an atlas as a Parquet table or as Neuronpedia-style ``batch-N.jsonl.gz`` files.

Both use Neuronpedia's column names, one row per neuron and matrix::

    layer, index, matrix, pos_str, pos_values, neg_str, neg_values

``pos_*`` are the top tokens (best first) and their scores, ``neg_*`` the bottom tokens
(most negative first). Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from conceptvec import files
from conceptvec.errors import AtlasError

from . import store
from .atlas import Atlas

PARQUET = "atlas.parquet"
NEURONPEDIA_DIR = "neuronpedia"
COLUMNS = ("layer", "index", "matrix", "pos_str", "pos_values", "neg_str", "neg_values")


def require_pyarrow() -> None:
    """Raise a one-line :class:`AtlasError` when pyarrow (an extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise AtlasError(
            "Parquet export needs pyarrow, which is not installed: pip install "
            "'conceptvec[parquet]', or export another format (neuronpedia, html; map: --export none)"
        )


def _open(atlas: Atlas | str | Path) -> Atlas:
    return atlas if isinstance(atlas, Atlas) else Atlas(atlas)


def _arrow_table(layer: int, matrix: str, shard: dict, vocab, expert: int | None = None):
    """Return one shard as a pyarrow table with Neuronpedia's columns (vectorised), and an
    ``expert`` column after ``layer`` in a mixture-of-experts model's atlas."""
    import pyarrow as pa

    n, k = shard["top_ids"].shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))

    def lists(ids, values):
        strs = vocab.take(pa.array(ids.numpy().reshape(-1).astype(np.int64)))
        vals = pa.array(values.numpy().reshape(-1).astype(np.float32))
        return pa.ListArray.from_arrays(offsets, strs), pa.ListArray.from_arrays(offsets, vals)

    pos_str, pos_values = lists(shard["top_ids"], shard["top_values"])
    neg_str, neg_values = lists(shard["bottom_ids"], shard["bottom_values"])
    columns = {"layer": pa.array(np.full(n, layer, dtype=np.int32))}
    if expert is not None:
        columns["expert"] = pa.array(np.full(n, expert, dtype=np.int32))
    return pa.table(
        {
            **columns,
            "index": pa.array(np.arange(n, dtype=np.int32)),
            "matrix": pa.array([matrix] * n, type=pa.string()),
            "pos_str": pos_str,
            "pos_values": pos_values,
            "neg_str": neg_str,
            "neg_values": neg_values,
        }
    )


def _tables(atlas: Atlas) -> Iterator:
    import pyarrow as pa

    vocab = pa.array(atlas.vocab, type=pa.string())
    for layer, expert, matrix, shard in atlas.expert_shards():
        yield _arrow_table(layer, matrix, shard, vocab, expert)


OWNER_KEY = b"conceptvec.atlas"
"""Parquet schema metadata key that marks a file as a conceptvec export."""


def export_parquet(
    atlas: Atlas | str | Path, out: str | Path | None = None, *, overwrite: bool = False
) -> Path:
    """Write the atlas as one Parquet table (a row group per shard); return its path.

    ``out`` defaults to ``atlas.parquet`` inside the atlas folder. An existing file is
    replaced only if conceptvec wrote it, and (for an explicit ``out``) only with
    ``overwrite``; any other file is never touched. Needs pyarrow (``conceptvec[parquet]``).
    """
    require_pyarrow()
    import pyarrow.parquet as pq

    atlas = _open(atlas)
    path = Path(out).expanduser() if out is not None else atlas.path / PARQUET
    _check_replaceable_file(path, overwrite or out is None)
    tables = _tables(atlas)
    first = next(tables, None)
    if first is None:
        raise AtlasError(f"{atlas.path} has no shards yet; run `conceptvec map` first")
    schema = first.schema.with_metadata({OWNER_KEY: str(store.SCHEMA_VERSION).encode()})
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, files.file_mode())
        os.close(fd)
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            writer.write_table(first.replace_schema_metadata(schema.metadata))
            for table in tables:
                writer.write_table(table.replace_schema_metadata(schema.metadata))
        _check_replaceable_file(path, overwrite or out is None)
        os.replace(tmp, path)
    except OSError as e:
        raise AtlasError(store.write_problem(path, e)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise AtlasError(
            f"cannot write {path}: the folder {path.parent} does not exist; create it first"
        )


def _check_replaceable_file(path: Path, replace: bool) -> None:
    """Raise unless ``path`` is absent, or a Parquet export of ours and ``replace`` is set."""
    _check_parent(path)
    if not path.exists() and not path.is_symlink():
        return
    if not replace:
        raise AtlasError(f"{path} exists; pass --overwrite to replace an earlier export")
    if path.is_symlink() or not path.is_file() or not _is_our_parquet(path):
        raise AtlasError(
            f"{path} exists and was not written by conceptvec; it is left alone, choose "
            "another --out"
        )


def _is_our_parquet(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not Parquet at all
        return False
    return OWNER_KEY in metadata


def neuronpedia_rows(atlas: Atlas | str | Path, model_id: str | None = None) -> Iterator[dict]:
    """Yield one Neuronpedia-style record per neuron and matrix.

    ``layer`` follows Neuronpedia's ``"<layer>-<source>"`` form, here ``"12-mlp-down"``; the
    numeric layer and the matrix are given on their own too. In a mixture-of-experts model's
    atlas the source names the expert (``"12-mlp-e5-down"``), also given as ``expert``.
    """
    atlas = _open(atlas)
    vocab = atlas.vocab
    model_id = model_id or atlas.model_name
    for layer, expert, matrix, shard in atlas.expert_shards():
        top_ids, top_v = shard["top_ids"].tolist(), shard["top_values"].tolist()
        bot_ids, bot_v = shard["bottom_ids"].tolist(), shard["bottom_values"].tolist()
        source = f"mlp-{matrix}" if expert is None else f"mlp-e{expert}-{matrix}"
        for i in range(len(top_ids)):
            yield {
                "modelId": model_id,
                "layer": f"{layer}-{source}",
                "index": str(i),
                "layer_num": layer,
                **({} if expert is None else {"expert": expert}),
                "matrix": matrix,
                "pos_str": [vocab[t] for t in top_ids[i]],
                "pos_values": [round(v, 5) for v in top_v[i]],
                "neg_str": [vocab[t] for t in bot_ids[i]],
                "neg_values": [round(v, 5) for v in bot_v[i]],
            }


def neuronpedia_activation_rows(atlas: Atlas, model_id: str | None = None) -> Iterator[dict]:
    """Yield one record per exemplar of the activation part, in Neuronpedia's activation
    format (``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``).

    The hidden activation is the input of the down projection, so records name the neuron's
    ``down`` source (``"12-mlp-down"``; another matrix if the atlas has no ``down``).
    ``maxValueTokenIndex`` is the firing token's index: for a bottom exemplar (``"sign": -1``)
    that is where the value is lowest. ``text`` and ``position`` say where in the corpus.
    """
    part = atlas.activations
    if part is None:
        return
    model_id = model_id or atlas.model_name
    matrix = "down" if "down" in atlas.matrices or not atlas.matrices else atlas.matrices[0]
    for layer in part.layers:
        for i in range(atlas.dims["d_mlp"]):
            for sign, side in ((1, "top"), (-1, "bottom")):
                for e in part.exemplars(layer, i, side):
                    yield {
                        "modelId": model_id,
                        "layer": f"{layer}-mlp-{matrix}",
                        "index": str(i),
                        "tokens": e.tokens,
                        "values": [round(v, 5) for v in e.values],
                        "maxValue": round(max(e.values), 5),
                        "maxValueTokenIndex": e.center,
                        "minValue": round(min(e.values), 5),
                        "sign": sign,
                        "text": e.text,
                        "position": e.position,
                    }


def export_neuronpedia(
    atlas: Atlas | str | Path,
    out: str | Path | None = None,
    *,
    batch_size: int = 4096,
    model_id: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``batch-0.jsonl.gz, batch-1.jsonl.gz, ...`` (``batch_size`` records each);
    ``progress`` shows a bar over the neurons on stderr.

    The folder ``out`` (default ``neuronpedia/`` in the atlas folder) is built under a
    temporary name and renamed, so a reader never sees half an export. An existing folder
    is replaced only if it holds nothing but an earlier export's batch files, and (for an
    explicit ``out``) only with ``overwrite``.
    """
    if batch_size < 1:
        raise AtlasError(f"batch_size must be at least 1 (got {batch_size})")
    atlas = _open(atlas)
    path = Path(out).expanduser() if out is not None else atlas.path / NEURONPEDIA_DIR
    _check_replaceable_folder(path, overwrite or out is None)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(files.file_mode() | 0o111)
    except OSError as e:
        raise AtlasError(store.write_problem(path, e)) from None
    old = None
    from conceptvec.progress import progress_bar

    total = len(atlas.manifest["shards"]) * int(atlas.dims["d_mlp"])
    bar = progress_bar(total, "neuronpedia export", progress, unit="neuron")
    try:
        batch: list[str] = []
        n = 0
        for row in neuronpedia_rows(atlas, model_id):
            batch.append(json.dumps(row, ensure_ascii=False))
            if len(batch) == batch_size:
                _write_batch(tmp / f"batch-{n}.jsonl.gz", batch)
                bar.update(len(batch))
                batch, n = [], n + 1
        if batch:
            _write_batch(tmp / f"batch-{n}.jsonl.gz", batch)
        batch, n = [], 0  # the activation part, if any: activations-batch-N.jsonl.gz
        for row in neuronpedia_activation_rows(atlas, model_id):
            batch.append(json.dumps(row, ensure_ascii=False))
            if len(batch) == batch_size:
                _write_batch(tmp / f"activations-batch-{n}.jsonl.gz", batch)
                batch, n = [], n + 1
        if batch:
            _write_batch(tmp / f"activations-batch-{n}.jsonl.gz", batch)
        _check_replaceable_folder(path, overwrite or out is None)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)  # an earlier export of ours (checked): set aside, then removed
        os.replace(tmp, path)
    except OSError as e:
        if old is not None and not path.exists():
            os.replace(old, path)
            old = None
        raise AtlasError(store.write_problem(path, e)) from None
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path


BATCH_FILE = re.compile(r"(activations-)?batch-[0-9]+\.jsonl\.gz")


def _check_replaceable_folder(path: Path, replace: bool) -> None:
    """Raise unless ``path`` is absent or empty, or (with ``replace``) a folder holding only
    an earlier Neuronpedia export's batch files."""
    _check_parent(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise AtlasError(f"{path} exists and is not a folder of ours; choose another --out")
    names = [p.name for p in path.iterdir()]
    if not names:
        return
    foreign = [n for n in names if not BATCH_FILE.fullmatch(n) or not (path / n).is_file()]
    if foreign:
        raise AtlasError(
            f"{path} holds files conceptvec did not write ({foreign[0]}, ...); it is left "
            "alone, choose another --out"
        )
    if not replace:
        raise AtlasError(f"{path} holds an earlier export; pass --overwrite to replace it")


def _write_batch(path: Path, lines: list[str]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode())
    path.write_bytes(buf.getvalue())
