"""Property-based fuzzing of every file conceptvec opens from others: each mutated file must
end in success or a one-line ConceptvecError, within the memory and time caps.

CI runs a short, derandomised pass (a few seconds per target). A long run::

    CONCEPTVEC_FUZZ_EXAMPLES=2000 CONCEPTVEC_FUZZ_RANDOM=1 \\
        OMP_NUM_THREADS=1 python -m pytest tests/fuzz -q -p no:cacheprovider

(``CONCEPTVEC_FUZZ_RANDOM=1`` draws new examples each run instead of the fixed CI ones.)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import assert_clean

EXAMPLES = int(os.environ.get("CONCEPTVEC_FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CONCEPTVEC_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=list(HealthCheck),
)

# ------------------------------------------------------------------------------ strategies
SIZES = st.sampled_from([0, 1, 2, 3, 7, 64, 2**31 - 1, 2**31, 2**32 - 1, 10**8, 2**63 - 1])
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        SIZES,
        st.floats(allow_nan=False),
        st.sampled_from([1e308, -1.0, 0.5, 32.0]),
        st.text(max_size=12),
        st.sampled_from(["../../../etc/passwd", "/dev/zero", "/etc/passwd", "shards/x"]),
        st.sampled_from(["['a', 'b']", "[[[[1]]]]", "(1,) * 9", "x" * ((4 << 20) + 1)]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value, prefix=()):
    """Yield the key paths of every value in a nested JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            yield from _paths(v, (*prefix, i))


def _set(doc, path, value, delete=False):
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


@st.composite
def json_mutation(draw, doc):
    """Return ``doc`` with one to three values replaced, deleted, or the whole doc swapped."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        doc = _set(doc, path, draw(JSON_VALUES), delete=draw(st.booleans()) and bool(path))
    return doc


@st.composite
def byte_mutation(draw, data: bytes, hot: int):
    """Return ``data`` with a few bytes overwritten (mostly in the first ``hot`` bytes, where
    headers live), or 32-bit fields set to extreme sizes, or cut short."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, min(hot, len(out)) - 1) | st.integers(0, len(out) - 1))
        if draw(st.booleans()):
            out[at : at + 4] = struct.pack("<I", draw(SIZES) & 0xFFFFFFFF)
        else:
            junk = draw(st.binary(min_size=1, max_size=8))
            out[at : at + len(junk)] = junk
    if draw(st.integers(0, 4)) == 0:
        del out[draw(st.integers(0, len(out))) :]
    return bytes(out)


def _fresh(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------- tests
def test_fuzz_config_json(seeds, worker, tmp_path_factory):
    base = json.loads((seeds["model"] / "config.json").read_text())
    work = tmp_path_factory.mktemp("fuzz-config")

    @FUZZ
    @given(json_mutation(base))
    def run(doc):
        folder = _fresh(seeds["model"], work / "m")
        (folder / "config.json").write_text(json.dumps(doc))
        assert_clean(worker.run("model", folder), f"config.json {json.dumps(doc)[:300]}")

    run()


def test_fuzz_safetensors_index(seeds, worker, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-index")
    keys = ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"]
    base = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in keys}}

    @FUZZ
    @given(json_mutation(base))
    def run(doc):
        folder = _fresh(seeds["model"], work / "m")
        (folder / "model.safetensors.index.json").write_text(json.dumps(doc))
        assert_clean(worker.run("model", folder), f"index {json.dumps(doc)[:300]}")

    run()


def test_fuzz_safetensors_bytes(seeds, worker, tmp_path_factory):
    data = (seeds["model"] / "model.safetensors").read_bytes()
    hot = 8 + int.from_bytes(data[:8], "little")
    work = tmp_path_factory.mktemp("fuzz-st")

    @FUZZ
    @given(byte_mutation(data, hot))
    def run(mutated):
        folder = _fresh(seeds["model"], work / "m")
        (folder / "model.safetensors").write_bytes(mutated)
        assert_clean(worker.run("model", folder), "mutated model.safetensors")

    run()


def test_fuzz_gguf_bytes(seeds, worker, tmp_path_factory):
    data = seeds["gguf"].read_bytes()
    hot = data.index(b"blk.0.") + 4096  # metadata and tensor infos
    work = tmp_path_factory.mktemp("fuzz-gguf")

    @FUZZ
    @given(byte_mutation(data, hot))
    def run(mutated):
        path = work / "tiny.gguf"
        path.write_bytes(mutated)
        os.utime(path, ns=(len(mutated), hash(mutated) & 0xFFFFFFFF))  # a fresh cache key
        assert_clean(worker.run("model", path), "mutated GGUF")

    run()


def test_fuzz_atlas_manifest(seeds, worker, tmp_path_factory):
    base = json.loads((seeds["atlas"] / "manifest.json").read_text())
    work = tmp_path_factory.mktemp("fuzz-manifest")

    @FUZZ
    @given(json_mutation(base))
    def run(doc):
        folder = _fresh(seeds["atlas"], work / "a")
        (folder / "manifest.json").write_text(json.dumps(doc))
        assert_clean(worker.run("atlas", folder), f"manifest {json.dumps(doc)[:300]}")

    run()


def test_fuzz_atlas_shard(seeds, worker, tmp_path_factory):
    shard = sorted((seeds["atlas"] / "shards").iterdir())[0]
    data = shard.read_bytes()
    hot = 8 + int.from_bytes(data[:8], "little")
    work = tmp_path_factory.mktemp("fuzz-shard")

    @FUZZ
    @given(byte_mutation(data, hot), st.booleans())
    def run(mutated, fix_hash):
        folder = _fresh(seeds["atlas"], work / "a")
        (folder / "shards" / shard.name).write_bytes(mutated)
        if fix_hash:  # a forged shard whose manifest hash matches: only the shape checks stop it
            import hashlib

            manifest = json.loads((folder / "manifest.json").read_text())
            entry = manifest["shards"][shard.name.removesuffix(".safetensors")]
            entry["sha256"] = hashlib.sha256(mutated).hexdigest()
            (folder / "manifest.json").write_text(json.dumps(manifest))
        assert_clean(worker.run("atlas", folder), "mutated shard")

    run()


def _sample() -> Path:
    from conceptvec.data import concepts_file

    return concepts_file("conceptvectors-dev")


def test_fuzz_concepts_file(worker, tmp_path_factory):
    records = json.loads(_sample().read_text())[:2]
    for rec in records:  # small seeds: the mutations, not the sample, should be large
        rec["wikipedia_content"] = rec.get("wikipedia_content", "")[:300]
    records[1]["QA"] = repr(records[1]["QA"])  # the string form some files use
    work = tmp_path_factory.mktemp("fuzz-concepts")

    @FUZZ
    @given(json_mutation(records))
    def run(doc):
        path = work / "concepts.json"
        path.write_text(json.dumps(doc))
        assert_clean(worker.run("concepts", path), f"concepts {json.dumps(doc)[:300]}")

    run()


def test_fuzz_unlearn_data(worker, tmp_path_factory):
    base = [{"question": "Who founded Rome?", "answer": "Romulus"}, {"text": "Rome. It is old."}]
    work = tmp_path_factory.mktemp("fuzz-unlearn")

    @FUZZ
    @given(json_mutation(base), st.sampled_from(["f.json", "f.jsonl", "f.txt"]))
    def run(doc, name):
        path = work / name
        if name == "f.jsonl" and isinstance(doc, list):
            path.write_text("".join(json.dumps(item) + "\n" for item in doc))
        elif name == "f.txt":
            path.write_text("\n\n".join(map(str, doc if isinstance(doc, list) else [doc])))
        else:
            path.write_text(json.dumps(doc))
        assert_clean(worker.run("unlearn_data", path), f"{name} {json.dumps(doc)[:300]}")

    run()
