"""Opening a GGUF and reading one MLP matrix: gguf.GGUFReader vs conceptvec's lean index.

Every weight-only command (``conceptvec neuron``, and the atlas later) starts by indexing
the GGUF. Three ways, timed in the same process, best of ``--repeat``:

- naive: ``gguf.GGUFReader(path)`` (what a research script would use), then its tensor;
- conceptvec: ``GGUFFile(path)`` (skips big metadata arrays, decodes them on request);
- floor: reading the header bytes (everything before the tensor data) from the page cache,
  which any index must at least touch.

Run: python benchmarks/bench_gguf_open.py [--repeat 5] [path.gguf ...]
With no paths it uses the SmolLM2 and Gemma 3 270M GGUFs from their PyPI packages.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _default_paths() -> list[Path]:
    from conceptvec.errors import ConceptvecError
    from conceptvec.models.aliases import ALIASES

    paths = []
    for alias in ("smollm2-135m", "gemma-3-270m"):
        try:
            paths.append(ALIASES[alias].locate())
        except ConceptvecError as e:
            print(f"skipping {alias}: {e}")
    return paths


def bench(path: Path, repeat: int) -> dict:
    import gguf

    from conceptvec.models.gguf_file import GGUFFile

    index = GGUFFile(path)
    data_start = min(t.offset for t in index.tensors.values())
    matrix = "blk.0.ffn_down.weight"

    def floor():
        with open(path, "rb") as f:
            f.read(data_start)

    def naive_open():
        return gguf.GGUFReader(str(path))

    def naive_matrix():
        reader = gguf.GGUFReader(str(path))
        t = next(t for t in reader.tensors if t.name == matrix)
        return gguf.quants.dequantize(t.data, t.tensor_type)

    def ours_matrix():
        return GGUFFile(path).dequantize(matrix)

    np.testing.assert_array_equal(naive_matrix().ravel(), ours_matrix().ravel())
    return {
        "file": path.name,
        "header_mb": data_start / 1e6,
        "floor_s": _best(floor, repeat),
        "naive_open_s": _best(naive_open, repeat),
        "ours_open_s": _best(lambda: GGUFFile(path), repeat),
        "naive_open_plus_matrix_s": _best(naive_matrix, repeat),
        "ours_open_plus_matrix_s": _best(ours_matrix, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(
        "| file | header MB | floor (read header) | GGUFReader open | conceptvec open | speed-up "
        "| GGUFReader open + blk.0.ffn_down | conceptvec open + blk.0.ffn_down |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in args.paths or _default_paths():
        r = bench(path, args.repeat)
        print(
            f"| {r['file']} | {r['header_mb']:.1f} | {r['floor_s'] * 1e3:.1f} ms "
            f"| {r['naive_open_s'] * 1e3:.0f} ms | {r['ours_open_s'] * 1e3:.0f} ms "
            f"| {r['naive_open_s'] / r['ours_open_s']:.0f}x "
            f"| {r['naive_open_plus_matrix_s'] * 1e3:.0f} ms | {r['ours_open_plus_matrix_s'] * 1e3:.0f} ms |"
        )


if __name__ == "__main__":
    main()
