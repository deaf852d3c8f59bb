"""A fuzz worker: opens hostile files under a memory cap and reports how each run ended.

Run as ``python -m tests.fuzz.worker CAP_MIB``. It imports conceptvec, caps its own address
space at its current size plus ``CAP_MIB`` (``resource.setrlimit``), then reads one JSON
request per line on stdin (``{"action": ..., "path": ...}``) and answers one JSON line:
``{"end": "ok" | "error" | "crash" | "memory", "detail": ...}``. ``error`` means a
:class:`ConceptvecError` (the promised outcome for bad input); ``crash`` carries the
traceback of anything else. The parent enforces the time cap by waiting on the answer.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import traceback
from pathlib import Path


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def act_model(path: str) -> str:
    """Open a model (folder or GGUF), decode one neuron of its first and last layer."""
    import conceptvec

    model = conceptvec.load(path, quiet=True)
    model.summary()
    last = model.dims.n_layers - 1
    for layer in sorted({0, last}):
        conceptvec.decode(model, f"L{layer}.0", k=2, matrix="down")
    return repr(model)


def act_atlas(path: str) -> str:
    """Open an atlas, read every shard, look up a neuron, search, export Parquet."""
    from conceptvec.atlas import Atlas
    from conceptvec.atlas.export import export_parquet

    atlas = Atlas(path)
    atlas.verify()
    for _ in atlas.shards():
        pass
    if atlas.layers:
        atlas.neuron(f"L{atlas.layers[0]}.0", matrix=atlas.matrices[0])
    try:
        atlas.search("the")
    except Exception as e:  # no matching token is a ConceptvecError too
        from conceptvec.errors import ConceptvecError

        if not isinstance(e, ConceptvecError):
            raise
    with tempfile.TemporaryDirectory() as out:
        export_parquet(atlas, Path(out) / "a.parquet")
    return repr(atlas)


def act_concepts(path: str) -> str:
    """Read a concepts file, show every entry and chunk its text as unlearning would."""
    from conceptvec.concepts import read_concepts
    from conceptvec.unlearning.data import chunk_text

    entries = read_concepts(path)
    for entry in entries:
        str(entry)
        chunk_text(entry.wikipedia_content)
    return f"{len(entries)} concepts"


def act_unlearn_data(path: str) -> str:
    """Read a user forget/retain file (text, JSON or JSONL) and chunk its texts."""
    from conceptvec.unlearning.data import chunk_text, read_pairs

    texts, pairs = read_pairs(path)
    for text in texts:
        chunk_text(text)
    return f"{len(texts)} texts, {len(pairs)} pairs"


ACTIONS = {
    "model": act_model,
    "atlas": act_atlas,
    "concepts": act_concepts,
    "unlearn_data": act_unlearn_data,
}


def main() -> None:
    cap_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    import pyarrow.parquet  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401

    import conceptvec  # noqa: F401 - import everything heavy before the cap
    import conceptvec.atlas.export  # noqa: F401
    import conceptvec.concepts  # noqa: F401
    import conceptvec.unlearning.data  # noqa: F401
    from conceptvec.errors import ConceptvecError

    cap = _vm_bytes() + (cap_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers go to the real stdout
    print(json.dumps({"end": "ready", "detail": cap}), file=out, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            detail = ACTIONS[request["action"]](request["path"])
            answer = {"end": "ok", "detail": detail[:200]}
        except ConceptvecError as e:
            text = str(e)
            answer = {"end": "error", "detail": text, "one_line": "\n" not in text}
        except MemoryError:
            answer = {"end": "memory", "detail": traceback.format_exc()[-2000:]}
        except BaseException:  # noqa: BLE001 - any other ending is what the fuzzer looks for
            answer = {"end": "crash", "detail": traceback.format_exc()[-4000:]}
        print(json.dumps(answer), file=out, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
