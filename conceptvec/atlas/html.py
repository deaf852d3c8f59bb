"""``export_html``: an atlas as a static HTML browser that opens from the file system.

>>> from conceptvec.atlas import Atlas
>>> export_html(Atlas("atlas/smollm2-135m"), "atlas/smollm2-135m-html")
PosixPath('atlas/smollm2-135m-html/index.html')

The page loads its data lazily by adding ``<script src="data/...js">`` tags; each data file
hands its JSON to ``conceptvecAtlas.load(name, data)`` (Chromium blocks ``fetch`` of
``file://`` URLs). Only the page of neurons on screen, the vocabulary chunks it shows and the
one search bucket of a query are loaded, so an 8B model browses like a tiny one. Token text
reaches the page only as JSON strings and is put on screen with ``textContent``.

Layout::

    OUT/
      index.html, atlas.js, atlas.css   the browser (copied from html_assets/)
      .conceptvec-html                  marker: this folder is an HTML export (safe to replace)
      data/meta.js                      model, dims, layers, matrices, k, page and bucket counts
      data/vocab/007.js                 display text (quoted, escaped) of 4096 token ids
      data/pages/L012.up.p003.js        top and bottom k ids and scores of page_size neurons
      data/search/0123.js               normalised token -> postings (neuron, rank, matches, score)
      data/acts/L012.p003.js            exemplars and statistics of those neurons (with a corpus;
                                        see :mod:`conceptvec.atlas.html_acts`)

Scores are integers with the file's ``decimals``. Search postings cover each neuron's first
``search_depth`` top tokens and are ranked as ``Atlas.search(query, max_rank=search_depth)``
ranks them; a bucket holds the tokens whose normalised text has that FNV-1a hash (over UTF-16
code units, as JavaScript sees strings).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from conceptvec.errors import AtlasError
from conceptvec.files import file_mode, swap_folder
from conceptvec.tokens import show

from . import store
from .atlas import Atlas, normalize

MARKER = ".conceptvec-html"
ASSETS_DIR = Path(__file__).with_name("html_assets")
ASSETS = ("index.html", "atlas.js", "atlas.css")
VOCAB_CHUNK = 4096
POSTINGS_PER_BUCKET = 8192
MAX_BUCKETS = 4096
MATRIX_ORDER = ("up", "gate", "down")
POSTING_FIELDS = ("key", "neuron", "rank", "matches", "score", "order")
FORMAT = 1


def export_html(
    atlas: Atlas,
    out: str | Path,
    *,
    search_depth: int = 10,
    page_size: int = 256,
    progress: bool = False,
) -> Path:
    """Return the path of ``index.html`` after writing ``atlas`` as a static browser into ``out``.

    ``search_depth`` (at most ``k``) is how many of each neuron's top tokens the search box
    finds; ``page_size`` is how many neuron cards one page shows. The folder is written beside
    ``out`` and renamed into place; an earlier export in ``out`` is replaced, any other
    non-empty folder is refused.
    """
    if page_size < 1 or search_depth < 1:
        raise AtlasError(
            f"page_size and search_depth must be at least 1 (got {page_size}, {search_depth})"
        )
    if not atlas.manifest["shards"]:
        raise AtlasError(f"{atlas.path} has no finished shards yet; run `conceptvec map` first")
    if atlas.dims.get("n_experts"):
        raise AtlasError(
            "the HTML browser does not show a mixture-of-experts atlas yet; export it as "
            "parquet or neuronpedia instead"
        )
    out = Path(out).expanduser()
    _check_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        tmp.chmod(file_mode() | 0o111)  # mkdtemp makes 0700; a web server must read it
    except OSError as e:
        raise AtlasError(
            f"cannot write {out} ({e.strerror or e}); choose a writable folder"
        ) from None
    try:
        _write_browser(atlas, tmp, min(search_depth, atlas.k), page_size, progress)
        swap_folder(tmp, out, check=lambda: _check_target(out))
    except OSError as e:
        raise AtlasError(
            f"cannot write {out} ({e.strerror or e}); free space or choose another folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


# ----------------------------------------------------------------------------- the folder
def _check_target(out: Path) -> None:
    """Raise unless ``out`` is absent, empty, or an earlier HTML export."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink():
        names = {p.name for p in out.iterdir()}
        if not names or ((out / MARKER).is_file() and names <= {*ASSETS, "data", MARKER}):
            return
    raise AtlasError(
        f"{out} exists and is not a conceptvec HTML export; choose a new or empty folder"
    )


def _write_browser(atlas: Atlas, root: Path, depth: int, page_size: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    data = root / "data"
    for sub in ("vocab", "pages", "search"):
        (data / sub).mkdir(parents=True)
    for name in ASSETS:
        shutil.copyfile(ASSETS_DIR / name, root / name)
    vocab = atlas.vocab
    _write_vocab(data, vocab)
    keys, key_of = _token_keys(vocab, atlas.dims["vocab"])
    entries = atlas.manifest["shards"]
    postings = []
    bar = tqdm(
        total=len(entries), unit="shard", desc="html pages", disable=not progress, file=sys.stderr
    )
    with bar:
        for order, (layer, matrix, shard) in enumerate(atlas.shards()):
            _write_pages(data, store.shard_name(layer, matrix), shard, page_size)
            base = (layer * len(MATRIX_ORDER) + MATRIX_ORDER.index(matrix)) * atlas.dims["d_mlp"]
            postings.append(_shard_postings(shard, depth, key_of, len(keys), base, order))
            bar.update(1)
    n_buckets = _write_search(data, keys, postings, progress)
    activations = None
    if atlas.activations is not None and atlas.activations.layers:  # the second view
        from .html_acts import write_activation_pages

        activations = write_activation_pages(
            atlas.activations, data, page_size, _write_script, _as_ints
        )
    strip, fold = _python_text_rules()
    meta = {
        "format": FORMAT,
        "model": atlas.model_name,
        "dims": atlas.dims,
        "k": atlas.k,
        "complete": atlas.complete,
        "layers": atlas.layers,
        "matrices": atlas.matrices,
        "shards": sorted(entries),
        "matrix_order": list(MATRIX_ORDER),
        "page_size": page_size,
        "pages": math.ceil(atlas.dims["d_mlp"] / page_size),
        "vocab_size": len(vocab),
        "vocab_chunk": VOCAB_CHUNK,
        "buckets": n_buckets,
        "search_depth": depth,
        "strip": strip,
        "fold": fold,
        "activations": activations,
    }
    _write_script(data / "meta.js", "meta", meta)
    marker = {"schema": "conceptvec.atlas.html", "format": FORMAT, "model": atlas.model_name}
    (root / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def _write_script(path: Path, name: str, payload) -> None:
    """Write ``conceptvecAtlas.load(name, payload)`` with JSON that is inert inside a script."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    path.write_bytes(f"conceptvecAtlas.load({json.dumps(name)},{text});\n".encode("ascii"))


# ------------------------------------------------------------------------- vocab and pages
def _write_vocab(data: Path, vocab: list[str]) -> None:
    """Write the quoted display text of every token, ``VOCAB_CHUNK`` ids per file."""
    for chunk, start in enumerate(range(0, len(vocab), VOCAB_CHUNK)):
        texts = [show(t) for t in vocab[start : start + VOCAB_CHUNK]]
        _write_script(data / "vocab" / f"{chunk:03d}.js", f"vocab/{chunk:03d}", texts)


def _write_pages(data: Path, name: str, shard: dict[str, torch.Tensor], page_size: int) -> None:
    """Write one (layer, matrix) shard as pages of ``page_size`` neurons, rows flattened."""
    n, k = shard["top_ids"].shape
    values = torch.cat([shard["top_values"], shard["bottom_values"]], dim=1).numpy()
    ints, decimals = _as_ints(values)
    ids = {side: shard[f"{side}_ids"].numpy() for side in ("top", "bottom")}
    for page, start in enumerate(range(0, n, page_size)):
        rows = slice(start, start + page_size)
        payload = {
            "start": start,
            "count": min(page_size, n - start),
            "k": k,
            "decimals": decimals,
            "top_ids": ids["top"][rows].ravel().tolist(),
            "top": ints[rows, :k].ravel().tolist(),
            "bottom_ids": ids["bottom"][rows].ravel().tolist(),
            "bottom": ints[rows, k:].ravel().tolist(),
        }
        page_name = f"{name}.p{page:03d}"
        _write_script(data / "pages" / f"{page_name}.js", f"pages/{page_name}", payload)


def _as_ints(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Return ``values`` as integers in units of ``10**-decimals`` (4 significant digits at the
    largest magnitude), and ``decimals``."""
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    largest = float(np.abs(finite).max()) if finite.size else 0.0
    decimals = 3 if largest == 0 else int(np.clip(4 - math.ceil(math.log10(largest)), 0, 8))
    return np.rint(finite * 10.0**decimals).astype(np.int64), decimals


# ---------------------------------------------------------------------------------- search
def _token_keys(vocab: list[str], vocab_size: int) -> tuple[list[str], np.ndarray]:
    """Return the distinct normalised token texts and each token id's index among them
    (-1 for tokens that normalise to nothing, and for ids past the vocabulary)."""
    index: dict[str, int] = {}
    key_of = np.full(max(len(vocab), vocab_size), -1, dtype=np.int64)
    for token_id, text in enumerate(vocab):
        key = normalize(text)
        if key:
            key_of[token_id] = index.setdefault(key, len(index))
    return list(index), key_of


def _shard_postings(
    shard: dict[str, torch.Tensor],
    depth: int,
    key_of: np.ndarray,
    n_keys: int,
    base: int,
    order: int,
) -> dict[str, np.ndarray]:
    """Return one posting per (neuron, normalised token) among each neuron's first ``depth``
    top tokens: the first rank it sits at, how many of those tokens match, and that score."""
    ids = shard["top_ids"][:, :depth].numpy().astype(np.int64)
    values = shard["top_values"][:, :depth].numpy().ravel()
    depth = ids.shape[1]
    keys = key_of[ids].ravel()
    kept = np.flatnonzero(keys >= 0)  # row-major, so a group's first element has its best rank
    _, first, matches = np.unique(
        kept // depth * n_keys + keys[kept], return_index=True, return_counts=True
    )
    at = kept[first]
    return {  # small dtypes: an 8B model has some 14M postings
        "key": keys[at].astype(np.int32),
        "neuron": (base + at // depth).astype(np.int32),
        "rank": (at % depth).astype(np.int16),
        "matches": matches.astype(np.int16),
        "score": values[at],
        "order": np.full(len(at), order, dtype=np.int16),
    }


def _write_search(data: Path, keys: list[str], postings: list[dict], progress: bool) -> int:
    """Write the search buckets; return how many there are."""
    from tqdm.auto import tqdm

    empty = [np.zeros(0, dtype=np.int64)]
    cat = {f: np.concatenate([p[f] for p in postings] or empty) for f in POSTING_FIELDS}
    n_buckets = 16
    while n_buckets < MAX_BUCKETS and n_buckets * POSTINGS_PER_BUCKET < len(cat["key"]):
        n_buckets *= 2
    bucket = np.array([fnv1a(k) % n_buckets for k in keys], dtype=np.int64)[cat["key"]]
    # Atlas.search order: rank, more matches, higher score, then shard and row order.
    c = cat
    sort = np.lexsort(
        (c["neuron"], c["order"], -c["score"], -c["matches"], c["rank"], c["key"], bucket)
    )
    bounds = np.searchsorted(bucket[sort], np.arange(n_buckets + 1))
    for i in tqdm(range(n_buckets), desc="html search", disable=not progress, file=sys.stderr):
        rows = sort[bounds[i] : bounds[i + 1]]
        key = cat["key"][rows]
        starts = np.flatnonzero(np.diff(key, prepend=-1))
        scores, decimals = _as_ints(cat["score"][rows])
        columns = [cat["neuron"][rows], cat["rank"][rows], cat["matches"][rows], scores]
        payload = {
            "decimals": decimals,
            "keys": [keys[k] for k in key[starts].tolist()],
            "offsets": starts.tolist() + [len(key)],
            "postings": np.stack(columns, axis=1).ravel().tolist(),
        }
        _write_script(data / "search" / f"{i:04d}.js", f"search/{i:04d}", payload)
    return n_buckets


def fnv1a(text: str) -> int:
    """Return the 32-bit FNV-1a hash of ``text``'s UTF-16 code units (what ``atlas.js`` computes)."""
    raw = text.encode("utf-16-le", "surrogatepass")
    h = 0x811C9DC5
    for i in range(0, len(raw), 2):
        h = ((h ^ (raw[i] | raw[i + 1] << 8)) * 0x01000193) & 0xFFFFFFFF
    return h


@lru_cache(maxsize=1)
def _python_text_rules() -> tuple[str, dict[str, str]]:
    """Return the characters ``str.strip`` removes and every character ``str.casefold``
    changes, so the page normalises queries exactly as :func:`normalize` does."""
    strip, fold = [], {}
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if ch.isspace():
            strip.append(ch)
        folded = ch.casefold()
        if folded != ch:
            fold[ch] = folded
    return "".join(strip), fold
