"""Hostile input (issue 12): files from the internet never exhaust memory, read outside their
folder, run code or delete a user's files; bad values end in one-line errors (exit 2).

Each test names the defect it pins down; docs/reliability.md lists them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import struct
import threading
from pathlib import Path

import gguf
import pytest
import torch

import conceptvec
from conceptvec.atlas import Atlas, build_atlas
from conceptvec.atlas.export import export_neuronpedia, export_parquet
from conceptvec.data import concepts_file
from conceptvec.errors import (
    AtlasError,
    BadNeuronIdError,
    ConceptvecError,
    CorruptAtlasError,
    CorruptWeightsError,
)
from conceptvec.neurons import NeuronId

from .conftest import build_tiny, run_cli
from .tiny_gguf import write_tiny_gguf

U32, ARRAY = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.ARRAY


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _no_hang(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def llama_hf():
    return build_tiny("llama")


@pytest.fixture(scope="module")
def atlas_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "atlas"
    build_atlas(str(tiny_dir("llama")), out, k=3, progress=False)
    return out


def _atlas_copy(atlas_dir: Path, tmp_path: Path) -> Path:
    return _copy(atlas_dir, tmp_path / "atlas")


def _edit_manifest(folder: Path, edit) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# ------------------------------------------------------------- 1. memory from a tiny file
@pytest.mark.parametrize("layers", [10**8, 0, -1, None, "3", [3], 2.5])
def test_config_layer_count_checked_against_weights(layers, tiny_dir, tmp_path):
    folder = _edit_config(_copy(tiny_dir("llama"), tmp_path / "m"), num_hidden_layers=layers)
    with pytest.raises(CorruptWeightsError, match="num_hidden_layers|layers but there is no"):
        conceptvec.load(folder)


@pytest.mark.parametrize("config", [[1, 2], "llama", 3, {"text_config": [1]}, {}])
def test_config_not_an_object(config, tiny_dir, tmp_path, monkeypatch, capsys):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli(["info", str(folder)], monkeypatch, capsys)
    assert code == 2 and out == "" and "Traceback" not in err


@pytest.mark.parametrize("key", ["intermediate_size", "hidden_size", "vocab_size"])
def test_config_widths_checked(key, tiny_dir, tmp_path):
    folder = _edit_config(_copy(tiny_dir("llama"), tmp_path / "m"), **{key: 10**9})
    with pytest.raises(ConceptvecError):
        conceptvec.load(folder)


@pytest.mark.parametrize("blocks", [10**8, 10**6])
def test_gguf_block_count_checked_against_tensors(blocks, llama_hf, tmp_path):
    hf, tok = llama_hf
    path = write_tiny_gguf(
        hf, tok, tmp_path / "big.gguf", fields={"llama.block_count": (blocks, U32)}
    )
    with pytest.raises(CorruptWeightsError, match=f"{blocks}(;| layers but there is no)"):
        conceptvec.load(path)


@pytest.mark.parametrize(
    "fields",
    [
        {"llama.block_count": (0, U32)},
        {"llama.embedding_length": (0, U32)},
        {"general.alignment": (0, U32)},
        {"general.alignment": (3, U32)},
        {"llama.block_count": ([1, 2], ARRAY)},
        {"general.architecture": ([1, 2], ARRAY)},
    ],
    ids=["blocks0", "width0", "align0", "align3", "array-blocks", "array-arch"],
)
def test_gguf_bad_metadata_is_one_line(fields, llama_hf, tmp_path, monkeypatch, capsys):
    hf, tok = llama_hf
    path = write_tiny_gguf(hf, tok, tmp_path / "bad.gguf", fields=fields)
    with pytest.raises(ConceptvecError):
        conceptvec.load(path, quiet=True)
    code, out, err = run_cli(["info", str(path)], monkeypatch, capsys)
    assert code == 2 and out == "" and "Traceback" not in err


def _raw_gguf(kvs: bytes, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + kvs


def test_gguf_deeply_nested_metadata(tmp_path):
    value = struct.pack("<I", 9)  # array...
    for _ in range(5000):
        value += struct.pack("<IQ", 9, 1)  # ...of one array, 5000 deep
    key = b"x.nested"
    path = tmp_path / "deep.gguf"
    path.write_bytes(_raw_gguf(struct.pack("<Q", len(key)) + key + value, 1))
    with pytest.raises(CorruptWeightsError, match="nest deeper"):
        conceptvec.load(path)


def test_gguf_huge_tensor_shape(tmp_path):
    name = b"token_embd.weight"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I", 2)
    info += struct.pack("<QQ", 2**62, 2**62) + struct.pack("<IQ", 0, 0)
    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info
    path = tmp_path / "huge.gguf"
    path.write_bytes(data + b"\0" * 64)
    with pytest.raises(CorruptWeightsError, match="truncated"):
        conceptvec.load(path)


def _special(kind: str, path: Path) -> None:
    if kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["devzero", "fifo", "folder"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "index"])
def test_model_files_must_be_regular(kind, name, tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    if name == "index":
        name = "model.safetensors.index.json"
    else:
        (folder / name).unlink()
    _special(kind, folder / name)
    with pytest.raises(ConceptvecError):
        _no_hang(lambda: conceptvec.load(folder))


def test_gguf_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "x.gguf")
    with pytest.raises(ConceptvecError):
        _no_hang(lambda: conceptvec.load(tmp_path / "x.gguf"))


@pytest.mark.parametrize("kind", ["devzero", "fifo"])
@pytest.mark.parametrize("name", ["manifest.json", "vocab.json", "shards/L000.up.safetensors"])
def test_atlas_files_must_be_regular(kind, name, atlas_dir, tmp_path):
    folder = _atlas_copy(atlas_dir, tmp_path)
    (folder / name).unlink()
    _special(kind, folder / name)

    def read():
        atlas = Atlas(folder)
        atlas.neuron("L0.1", matrix="up")
        return atlas.vocab

    with pytest.raises(ConceptvecError):
        _no_hang(read)


def test_manifest_vocab_size_checked(atlas_dir, tmp_path, monkeypatch, capsys):
    folder = _edit_manifest(
        _atlas_copy(atlas_dir, tmp_path), lambda m: m["dims"].update(vocab=10**9)
    )
    code, _, err = run_cli(["export", str(folder), "-f", "html"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err


def test_forged_shard_shape_refused(atlas_dir, tmp_path):
    folder = _atlas_copy(atlas_dir, tmp_path)
    from conceptvec.atlas import store

    big = {n: torch.zeros(64, 50, dtype=torch.int32) for n in ("top_ids", "bottom_ids")}
    big |= {n: torch.zeros(64, 50) for n in ("top_values", "bottom_values")}
    data = store.encode_shard(big, {})
    (folder / "shards" / "L000.up.safetensors").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    _edit_manifest(folder, lambda m: m["shards"]["L000.up"].update(sha256=sha))
    with pytest.raises(CorruptAtlasError):
        Atlas(folder).neuron("L0.1", matrix="up")


# ------------------------------------------------------------ 2. paths outside the folder
@pytest.mark.parametrize("target", ["../../../etc/passwd", "/etc/passwd", "../other/x"])
def test_manifest_paths_confined(target, atlas_dir, tmp_path):
    folder = _edit_manifest(
        _atlas_copy(atlas_dir, tmp_path), lambda m: m["shards"]["L000.up"].update(file=target)
    )
    with pytest.raises(CorruptAtlasError, match="points at"):
        Atlas(folder)


def test_shard_symlinked_outside_refused(atlas_dir, tmp_path):
    folder = _atlas_copy(atlas_dir, tmp_path)
    shard = folder / "shards" / "L000.up.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    with pytest.raises(CorruptAtlasError, match="outside the folder"):
        Atlas(folder).neuron("L0.1", matrix="up")


def test_resume_drops_foreign_entries(atlas_dir, tiny_dir, tmp_path):
    folder = _atlas_copy(atlas_dir, tmp_path)
    other = tmp_path / "other.safetensors"
    shutil.copy(folder / "shards" / "L001.up.safetensors", other)

    def forge(m):  # L000.up served from another file whose sha matches
        m["shards"]["L000.up"].update(file=str(other), sha256=m["shards"]["L001.up"]["sha256"])
        m["complete"] = False

    _edit_manifest(folder, forge)
    report = build_atlas(str(tiny_dir("llama")), folder, k=3, progress=False)
    assert "L000.up" in report.shards_written and report.complete
    assert Atlas(folder).manifest["shards"]["L000.up"]["file"] == "shards/L000.up.safetensors"
    assert Atlas(folder).verify() == []


def test_weights_symlinked_outside_refused(tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(CorruptWeightsError, match="outside the folder"):
        conceptvec.load(folder)


@pytest.mark.parametrize("name", ["ABS", "../x/model.safetensors"])
def test_index_paths_confined(name, tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    if name == "ABS":
        name = str(folder / "model.safetensors")
    weight_map = {"model.embed_tokens.weight": name}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CorruptWeightsError, match="absolute path|outside the folder"):
        conceptvec.load(folder)


@pytest.mark.parametrize("index", [[1, 2], {"weight_map": ["a"]}, "x", {"weight_map": {"a": 1}}])
def test_bad_index_is_one_line(index, tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptWeightsError, match="not a valid safetensors index"):
        conceptvec.load(folder)


# ---------------------------------------------------------------------- 4. never a .bin
def test_hf_model_built_from_the_safetensors_the_readers_use(tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    # A pickle that would be loaded by the .bin fallback (and would give other weights).
    hf, _ = build_tiny("llama", seed=1)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    model = conceptvec.load(folder)
    live = model.hf.model.layers[1].mlp.down_proj.weight
    assert torch.equal(live, model.reader.get("model.layers.1.mlp.down_proj.weight"))


def test_transformers_error_does_not_suggest_remote_code(tiny_dir, tmp_path):
    folder = _edit_config(_copy(tiny_dir("llama"), tmp_path / "m"), rope_scaling="bad")
    with pytest.raises(ConceptvecError) as info:
        conceptvec.load(folder).hf  # noqa: B018
    assert "trust_remote_code" not in str(info.value)


# ------------------------------------------------------------------ 5. exports lose nothing
def test_neuronpedia_export_keeps_other_files(atlas_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "batch-0.jsonl.gz").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        args = ["export", str(atlas_dir), "-f", "neuronpedia", "-o", str(out), *extra]
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 2 and "Traceback" not in err
        assert (out / "notes.txt").read_text() == "mine"


def test_neuronpedia_export_replaces_own_only_with_overwrite(atlas_dir, tmp_path):
    out = tmp_path / "np"
    export_neuronpedia(atlas_dir, out)
    with pytest.raises(AtlasError, match="--overwrite"):
        export_neuronpedia(atlas_dir, out)
    assert export_neuronpedia(atlas_dir, out, overwrite=True) == out


def test_parquet_export_never_overwrites_foreign_files(atlas_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "data.parquet"
    out.write_text("precious")
    for extra in ([], ["--overwrite"]):
        args = ["export", str(atlas_dir), "-f", "parquet", "-o", str(out), *extra]
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 2 and "Traceback" not in err
    assert out.read_text() == "precious"
    mine = tmp_path / "mine.parquet"
    export_parquet(atlas_dir, mine)
    with pytest.raises(AtlasError, match="--overwrite"):
        export_parquet(atlas_dir, mine)
    assert export_parquet(atlas_dir, mine, overwrite=True) == mine


@pytest.mark.parametrize("fmt", ["parquet", "neuronpedia", "html"])
def test_export_into_missing_folder(fmt, atlas_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "no" / "such" / "dir" / "x"
    code, _, err = run_cli(
        ["export", str(atlas_dir), "-f", fmt, "-o", str(out)], monkeypatch, capsys
    )
    assert "Traceback" not in err
    assert code in (0, 2)  # html makes its folder; the others say the folder is missing


def test_html_export_is_world_readable(atlas_dir, tmp_path):
    from conceptvec.atlas.html import export_html

    page = export_html(Atlas(atlas_dir), tmp_path / "site")
    mode = stat.S_IMODE(page.parent.stat().st_mode)
    assert mode & 0o055 == 0o055 & ~_umask(), oct(mode)


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_html_export_keeps_foreign_files(atlas_dir, tmp_path):
    from conceptvec.atlas.html import MARKER, export_html

    out = tmp_path / "site"
    export_html(Atlas(atlas_dir), out)
    (out / "thesis.tex").write_text("mine")
    assert (out / MARKER).exists()
    with pytest.raises(AtlasError):
        export_html(Atlas(atlas_dir), out)
    assert (out / "thesis.tex").read_text() == "mine"


# -------------------------------------------------------- 6, 7, 9. values and CLI limits
def test_manifest_missing_keys(atlas_dir, tmp_path):
    for key in ("dims", "k", "shards", "recipe", "model_name", "vocab_sha256"):
        folder = _edit_manifest(_copy(atlas_dir, tmp_path / key), lambda m, key=key: m.pop(key))
        with pytest.raises(AtlasError):
            Atlas(folder)


@pytest.mark.parametrize(
    "args",
    [
        ["clamp", "{llama}", "L1.3=1e308", "-p", "The dog", "-n", "1"],
        ["ablate", "{llama}", "L1.3", "--mode", "noise", "--std", "1e300", "-p", "x", "--json"],
        ["clamp", "{gpt2}", "L1.3=3", "-p", "dog " * 100, "-n", "1"],
        ["clamp", "{llama}", "L1.3=3", "-p", "dog", "-n", "1000000000"],
        ["clamp", "{llama}", "L1.3=3", "-p", "dog", "-t", " dog", "--controls", "100000"],
        ["search", "{llama}", "  "],
        ["map", "{llama}", "--layers", "2-1", "-o", "{tmp}/a"],
        ["neuron", "{llama}", "L١.٢"],
    ],
    ids=[
        "clamp-1e308",
        "noise-1e300",
        "gpt2-long",
        "max-tokens",
        "controls",
        "empty-word",
        "reversed-layers",
        "arabic-digits",
    ],
)
def test_cli_limits(args, tiny_dir, tmp_path, monkeypatch, capsys):
    fill = {"llama": tiny_dir("llama"), "gpt2": tiny_dir("gpt2"), "tmp": tmp_path}
    args = [a.format(**fill) if "{" in a else a for a in args]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2, err
    assert "Traceback" not in err and "NaN" not in out
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_neuron_ids_ascii_only():
    with pytest.raises(BadNeuronIdError):
        NeuronId.parse("L١.٢")
    assert NeuronId.parse("L1.2") == NeuronId(1, 2)


def test_empty_search_word_in_atlas(atlas_dir):
    with pytest.raises(AtlasError, match="cannot search"):
        Atlas(atlas_dir).search(" ")


# --------------------------------------------------------------------- 8. atlas hygiene
def test_stale_temporaries_removed(atlas_dir, tiny_dir, tmp_path):
    folder = _atlas_copy(atlas_dir, tmp_path)
    stale = [
        folder / ".vocab.json.abc123.tmp",
        folder / ".manifest.json.x.tmp",
        folder / "shards" / ".L000.up.safetensors.zz.tmp",
    ]
    for p in stale:
        p.write_bytes(b"half")
    (folder / "keep.tmp").write_text("not ours")
    build_atlas(str(tiny_dir("llama")), folder, k=3, progress=False, overwrite=True)
    assert not any(p.exists() for p in stale)


def test_setup_leftovers_do_not_demand_overwrite(tiny_dir, atlas_dir, tmp_path):
    folder = tmp_path / "a"
    (folder / "shards").mkdir(parents=True)
    shutil.copy(atlas_dir / "vocab.json", folder)  # a run killed before its first manifest
    report = build_atlas(str(tiny_dir("llama")), folder, k=3, progress=False)
    assert report.complete


def test_foreign_vocab_json_is_not_a_leftover(tiny_dir, tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text('{"hello": 0}')  # the user's own file
    with pytest.raises(AtlasError, match="not empty"):
        build_atlas(str(tiny_dir("llama")), folder, k=3, progress=False)
    assert (folder / "vocab.json").read_text() == '{"hello": 0}'


def test_concurrent_map_is_locked(tiny_dir, tmp_path):
    from conceptvec.atlas import store

    folder = tmp_path / "a"
    folder.mkdir()
    handle = store.lock_folder(folder)
    try:
        assert (folder / store.LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(AtlasError, match=f"pid {os.getpid()}"):
            build_atlas(str(tiny_dir("llama")), folder, k=3, progress=False)
    finally:
        store.unlock_folder(handle)
    assert build_atlas(str(tiny_dir("llama")), folder, k=3, progress=False).complete
    assert not (folder / store.LOCK).exists()


# ============================================================ issue 25: hostile input, round 2
SAMPLE = concepts_file("conceptvectors-dev")


def _one_line_exit_2(code: int, err: str) -> None:
    """Exit 2 and one ``error:`` line, last, on a line of its own (progress bars before it
    are cleared or ended with their own line break)."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:") and err.endswith("\n"), err
    assert "Traceback" not in err and sum("error" in line for line in lines) == 1, err


CAPPED = """
import resource, sys
import torch, transformers, conceptvec.cli
with open("/proc/self/status") as f:
    vm = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmSize:"))
cap = vm + (int(sys.argv[1]) << 20)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
sys.argv = ["conceptvec", *sys.argv[2:]]
conceptvec.cli.main()
"""


def _cli_capped(args: list[str], mib: int = 1024, seconds: int = 90) -> tuple[int, str, str]:
    """Run ``conceptvec ARGS`` in a subprocess whose address space may grow by ``mib`` MiB
    beyond its size after imports, killed after ``seconds``; return (code, stdout, stderr)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = ["timeout", "-s", "KILL", str(seconds), sys.executable, "-c", CAPPED, str(mib), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    return done.returncode, done.stdout, done.stderr


def _user_folder(tmp_path: Path, names: list[str]) -> tuple[Path, dict[str, bytes]]:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in names:
        (theirs / name).write_bytes(b"the user's own " + name.encode())
    return theirs, {p.name: p.read_bytes() for p in theirs.iterdir()}


# ----------------------------------------------------------------- 1. writes and deletes
@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
def test_map_refuses_symlinked_shards_folder(overwrite, atlas_dir, tiny_dir, tmp_path):
    root = _atlas_copy(atlas_dir, tmp_path)
    names = [p.name for p in (root / "shards").iterdir()]
    shutil.rmtree(root / "shards")
    theirs, before = _user_folder(tmp_path, names)
    (root / "shards").symlink_to(theirs)
    with pytest.raises(AtlasError, match="symbolic link"):
        build_atlas(str(tiny_dir("llama")), root, k=3, progress=False, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before


def test_map_refuses_symlinked_shard_file(atlas_dir, tiny_dir, tmp_path):
    root = _atlas_copy(atlas_dir, tmp_path)
    shard = next((root / "shards").iterdir())
    theirs, before = _user_folder(tmp_path, [shard.name])
    shard.unlink()
    shard.symlink_to(theirs / shard.name)
    with pytest.raises(AtlasError, match="symbolic link"):
        build_atlas(str(tiny_dir("llama")), root, k=3, progress=False)
    assert shard.is_symlink() and (theirs / shard.name).read_bytes() == before[shard.name]


def test_lm_eval_overwrite_keeps_files_added_later(tiny_dir, tmp_path):
    from conceptvec.plugins import PluginError, export_lm_eval

    out = tmp_path / "x"
    args = (tiny_dir("llama"), SAMPLE, "Ancient Rome", out)
    fast = dict(sets=["completion"], max_new_tokens=2, batch_size=4)
    export_lm_eval(*args, **fast)
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(PluginError, match="not ours to replace"):
        export_lm_eval(*args, overwrite=True, **fast)
    assert (out / "my_notes.txt").read_text() == "mine"
    (out / "my_notes.txt").unlink()
    export_lm_eval(*args, overwrite=True, **fast)  # an export of ours alone is replaced


def test_eval_checks_every_output_before_work(tiny_dir, tmp_path, monkeypatch, capsys):
    tiny = tiny_dir("llama")
    records = [r for r in json.loads(SAMPLE.read_text()) if r["Concept"] == "Ancient Rome"]
    concepts = tmp_path / "c.json"
    concepts.write_text(json.dumps([{**records[0], "Layer": 1, "Dim": 3}]))
    (tmp_path / "page").mkdir()
    js = tmp_path / "r.json"
    args = ["eval", str(tiny), str(tiny), "--concepts", str(concepts), "--no-qa", "--no-trace"]
    args += ["--out", str(js), "--html", str(tmp_path / "page"), "--overwrite"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert "is a folder" in err and not js.exists()


# -------------------------------------------------------------------------------- 2. reading
@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ],
)
def test_model_folder_files_symlinked_outside_refused(name, tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    outside = tmp_path / f"elsewhere-{name}"
    if (folder / name).exists():
        shutil.move(folder / name, outside)
    else:
        outside.write_text("{{ messages[0]['content'] }}")
    (folder / name).symlink_to(outside)
    with pytest.raises(CorruptWeightsError, match="outside the folder"):
        model = conceptvec.load(folder)
        assert model.tokenizer is not None and model.hf is not None


# ------------------------------------------------------------ 3. memory and time caps
NESTED_LOOPS = (
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    "{{ messages[0]['content'] }}"
)
DOUBLING = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"


@pytest.mark.parametrize(
    "template",
    [NESTED_LOOPS, DOUBLING, "{{ raise_exception('no') }}", "{{ ''.__class__.__mro__ }}{% if %}"],
    ids=["nested-range", "doubling", "template-error", "syntax-error"],
)
def test_chat_template_rendered_under_limits(template, tiny_dir, tmp_path, monkeypatch, capsys):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    (folder / "chat_template.jinja").write_text(template)
    args = ["clamp", str(folder), "L1.3=2", "-p", "hi", "--chat", "-n", "1"]
    if template in (NESTED_LOOPS, DOUBLING):  # under a memory cap: the old code used 5 GB
        code, out, err = _cli_capped(args)
    else:
        code, out, err = run_cli(args, monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert "chat template" in err


@pytest.mark.parametrize(
    "settings",
    [{"num_beams": 10**6}, {"num_return_sequences": 10**6, "do_sample": True}],
    ids=["beams", "sequences"],
)
def test_generation_config_is_data(settings, tiny_dir, tmp_path):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **settings}))
    code, out, err = _cli_capped(["clamp", str(folder), "L1.3=2", "-p", "hi", "-n", "2", "--json"])
    assert code == 0, err
    assert json.loads(out)


def _concept(**fields) -> dict:
    return {"Concept": "Rome", "QA": ["Who founded Rome?"], **fields}


@pytest.mark.parametrize(
    "fields",
    [
        {"QA": repr(["q" * (1 << 20)])},
        {"wikipedia_content": "w" * ((4 << 20) + 1)},
        {"QA": ["q"] * 10_001},
        {"QA": ["q" * ((4 << 20) + 1)]},
        {"text_completion": [{"First_half": "a" * ((4 << 20) + 1), "Second_half": "b"}]},
    ],
    ids=["string-list", "wikipedia", "question-count", "question", "completion"],
)
def test_concepts_file_field_caps(fields):
    from conceptvec.concepts import read_concepts
    from conceptvec.errors import BadConceptFileError

    with pytest.raises(BadConceptFileError, match="allowed; (shorten|split)"):
        read_concepts([_concept(**fields)])


def test_concepts_file_record_count_capped():
    from conceptvec.concepts import read_concepts
    from conceptvec.errors import BadConceptFileError

    with pytest.raises(BadConceptFileError, match="100,000 allowed"):
        read_concepts([_concept()] * 100_001)


@pytest.mark.parametrize(
    "name, body",
    [
        ("f.jsonl", json.dumps({"question": "q" * ((4 << 20) + 1), "answer": "a"})),
        ("f.json", json.dumps(["t" * ((4 << 20) + 1)])),
        ("f.txt", "t" * ((4 << 20) + 1)),
        ("f.json", "[" * 100_000 + "]" * 100_000),
    ],
    ids=["jsonl-question", "json-text", "txt-paragraph", "deep-json"],
)
def test_unlearn_data_field_caps(name, body, tmp_path):
    from conceptvec.unlearning.data import read_pairs
    from conceptvec.unlearning.methods import UnlearningError

    (tmp_path / name).write_text(body)
    with pytest.raises(UnlearningError, match="allowed; shorten|nested too deeply"):
        read_pairs(tmp_path / name)


# ------------------------------------------------------------------ 4. kill during save
UNLEARN_FAST = dict(max_length=48, max_new_tokens=6, batch_size=2, evaluate=False, progress=False)


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    from conceptvec.unlearning.train import COMPLETE_FILE, last_checkpoint

    for step, complete in ((2, True), (4, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / COMPLETE_FILE).write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / COMPLETE_FILE).unlink()
    assert last_checkpoint(tmp_path) is None


def test_checkpoints_marked_complete_and_leftovers_removed(tiny_dir, tmp_path):
    from conceptvec.unlearning import unlearn
    from conceptvec.unlearning.output import WRITING_MARK
    from conceptvec.unlearning.train import COMPLETE_FILE

    ours = tmp_path / ".fin.writing-dead1"  # a run killed while writing its output
    ours.mkdir()
    (ours / WRITING_MARK).write_text(json.dumps({"written_by": "conceptvec unlearn"}))
    theirs = tmp_path / ".fin.writing-user"
    theirs.mkdir()
    kw = dict(concepts=SAMPLE, steps=2, lr=1e-3, save_every=1, keep_checkpoints=True)
    unlearn(tiny_dir("llama"), "Ancient Rome", "ga", out=tmp_path / "fin", **kw, **UNLEARN_FAST)
    assert not ours.exists() and theirs.is_dir()
    work = tmp_path / ".fin.run"
    assert all((p / COMPLETE_FILE).is_file() for p in work.glob("checkpoint-*"))
    assert not (tmp_path / "fin" / WRITING_MARK).exists()


def test_nan_stop_without_checkpoint_does_not_block_retry(tiny_dir, tmp_path):
    from conceptvec.unlearning import unlearn
    from conceptvec.unlearning.methods import UnlearningError

    kw = dict(concepts=SAMPLE, steps=4, save_every=0, out=tmp_path / "u", **UNLEARN_FAST)
    with pytest.raises(UnlearningError, match="loss became"):
        unlearn(tiny_dir("llama"), "Ancient Rome", "ga", lr=1e30, **kw)
    assert not (tmp_path / ".u.run").exists()
    unlearn(tiny_dir("llama"), "Ancient Rome", "ga", lr=1e-3, **{**kw, "steps": 1})


def _edit_weights(folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_ten_thousand_neurons_decoded_in_batches(tiny_dir, monkeypatch):
    from conceptvec import decoding

    seen: list[int] = []
    project = decoding.project

    def spy(m, vectors, fold_norm):
        seen.append(len(vectors))
        return project(m, vectors, fold_norm)

    monkeypatch.setattr(decoding, "project", spy)
    model = conceptvec.load(tiny_dir("llama"))
    ids = [f"L{i % 3}.{i % 64}" for i in range(10_000)]
    out = decoding.decode(model, ids, k=2)
    assert len(out) == 10_000 and max(seen) <= decoding.DECODE_BATCH


# ---------------------------------------------------------------- 7. non-finite numbers
def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in --json output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_json_output_has_no_bare_nan(bad, tiny_dir, tmp_path, monkeypatch, capsys):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")

    def poison(w):
        w["model.layers.1.mlp.down_proj.weight"][:, 3] = bad

    _edit_weights(folder, poison)
    code, out, err = run_cli(["neuron", str(folder), "L1.3", "--json"], monkeypatch, capsys)
    assert code == 0, err
    _strict_json(out)


# -------------------------------------------------------------- 5. one line, exit 2
HUGE = "1" * 5000


@pytest.mark.parametrize(
    "args",
    [
        ["neuron", "{llama}", f"L1.{HUGE}"],
        ["neuron", "{llama}", f"L{HUGE}.3"],
        ["neuron", "{llama}", f"{HUGE}:3"],
        ["neuron", "{llama}", f"L1.E{HUGE}.3"],
        ["clamp", "{llama}", f"L1.{HUGE}=2", "-p", "x", "-n", "1"],
        ["neuron", "{llama}", "L1.3", "--k", "0"],
        ["neuron", "{llama}", "L1.3", "--bogus"],
        ["neuron"],
        ["no-such-command"],
    ],
    ids=["index", "layer", "colon", "expert", "clamp", "k0", "option", "missing", "command"],
)
def test_bad_arguments_are_one_line(args, tiny_dir, monkeypatch, capsys):
    args = [a.replace("{llama}", str(tiny_dir("llama"))) for a in args]
    code, out, err = run_cli(args, monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert "╭" not in err and "Usage:" not in err


@pytest.mark.parametrize("field", ["Layer", "Dim"], ids=["layer", "dim"])
@pytest.mark.parametrize("as_string", [True, False], ids=["string", "number"])
def test_concepts_file_huge_integers(field, as_string, tmp_path):
    from conceptvec.concepts import read_concepts
    from conceptvec.errors import BadConceptFileError

    path = tmp_path / "c.json"
    value = json.dumps(HUGE) if as_string else HUGE
    path.write_text(f'[{{"Concept": "Rome", "QA": ["q"], "{field}": {value}}}]')
    with pytest.raises(BadConceptFileError):
        read_concepts(path)


@pytest.mark.parametrize("value", [HUGE, "[" * 100_000 + "]" * 100_000], ids=["huge", "deep"])
def test_unlearn_set_values_are_data(value):
    from conceptvec.commands.unlearn import _hparams

    assert _hparams([f"beta={value}"]) == {"beta": value}


@pytest.mark.parametrize(
    "args, message",
    [
        (["clamp", "{llama}", "L1.3=2", "-p", "x", "-n", "0", "--top-k", "1000000000"], None),
        (
            [
                "unlearn",
                "{llama}",
                "--concept",
                "Ancient Rome",
                "--method",
                "ga",
                "--concepts",
                "conceptvectors-dev",
                "--steps",
                "1000000000",
                "-o",
                "{tmp}/u",
            ],
            "steps must be",
        ),
        (
            [
                "unlearn",
                "{llama}",
                "--concept",
                "Ancient Rome",
                "--method",
                "ga",
                "--concepts",
                "conceptvectors-dev",
                "--threads",
                "4096",
                "-o",
                "{tmp}/u",
            ],
            "--threads 4096",
        ),
        (
            [
                "eval",
                "{llama}",
                "{llama}",
                "--concepts",
                "{tmp}/c.json",
                "--relearn-lr",
                "nan",
                "--attacks",
                "relearn",
            ],
            "relearn",
        ),
        (
            [
                "eval",
                "{llama}",
                "{llama}",
                "--concepts",
                "{tmp}/c.json",
                "--relearn-steps",
                "1000000000",
                "--attacks",
                "relearn",
            ],
            "relearn",
        ),
    ],
    ids=["top-k-1e9", "steps-1e9", "threads-4096", "relearn-lr-nan", "relearn-steps-1e9"],
)
def test_run_sizes_capped(args, message, tiny_dir, tmp_path, monkeypatch, capsys):
    records = [r for r in json.loads(SAMPLE.read_text()) if r["Concept"] == "Ancient Rome"]
    (tmp_path / "c.json").write_text(json.dumps([{**records[0], "Layer": 1, "Dim": 3}]))
    args = [
        a.replace("{llama}", str(tiny_dir("llama"))).replace("{tmp}", str(tmp_path)) for a in args
    ]
    code, out, err = _no_hang(lambda: run_cli(args, monkeypatch, capsys), 120)
    if message is None:
        assert code == 0, err
    else:
        _one_line_exit_2(code, err)
        assert message in err


# ------------------------------------------------------- 6. silently accepted bad input
def test_all_nan_checkpoint_is_not_called_erased(tiny_dir, tmp_path, monkeypatch, capsys):
    tiny = tiny_dir("llama")
    broken = _copy(tiny, tmp_path / "nan")

    def poison(w):
        for value in w.values():
            if value.is_floating_point():
                value.fill_(float("nan"))

    _edit_weights(broken, poison)
    records = [r for r in json.loads(SAMPLE.read_text()) if r["Concept"] == "Ancient Rome"]
    (tmp_path / "c.json").write_text(json.dumps([{**records[0], "Layer": 1, "Dim": 3}]))
    args = ["eval", str(tiny), str(broken), "--concepts", str(tmp_path / "c.json")]
    code, out, err = run_cli([*args, "--no-qa", "--no-trace"], monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert "NaN" in err and "erased" not in out


# ------------------------------------------------------------------------ 8. small ones
def test_lm_eval_task_names_of_non_ascii_concepts_differ_and_command_is_quoted(tiny_dir, tmp_path):
    import shlex

    from conceptvec.plugins import export_lm_eval

    rome = next(r for r in json.loads(SAMPLE.read_text()) if r["Concept"] == "Ancient Rome")
    records = [{**rome, "Concept": name} for name in ("Ελλάδα", "Россия")]
    fast = dict(sets=["completion"], max_new_tokens=2, batch_size=4)
    tags = []
    for i, rec in enumerate(records):
        out = tmp_path / f"my exports {i}"
        ex = export_lm_eval(tiny_dir("llama"), records, rec["Concept"], out, **fast)
        tags.append(ex.tag)
        words = shlex.split(ex.command)
        assert words[words.index("--include_path") + 1] == str(out.absolute())
    assert tags[0] != tags[1]


def test_clamp_error_names_the_weights_when_they_are_the_cause(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")

    def poison(w):
        w["model.layers.1.mlp.down_proj.weight"][:, 3] = float("nan")

    _edit_weights(folder, poison)
    args = ["clamp", str(folder), "L1.3=2", "-p", "the dog", "-n", "1"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert "weights" in err and "intervention is too large" not in err


def test_wrong_length_norm_weight_is_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    folder = _copy(tiny_dir("llama"), tmp_path / "m")

    def shorten(w):
        w["model.norm.weight"] = torch.ones(5)

    _edit_weights(folder, shorten)
    code, out, err = run_cli(["neuron", str(folder), "L1.3"], monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert "model.norm.weight" in err


# ------------------------------------------------- issue 25, "not yet": weights that lie
def _neuron_cli(folder: Path, monkeypatch, capsys) -> str:
    code, out, err = run_cli(["neuron", str(folder), "L1.3"], monkeypatch, capsys)
    _one_line_exit_2(code, err)
    return err


@pytest.mark.parametrize("short", ["config", "tokenizer"])
def test_lm_head_smaller_than_vocabulary_refused(short, tiny_dir, tmp_path, monkeypatch, capsys):
    """A head with fewer rows than the config's vocab_size, or than the tokenizer's tokens,
    leaves tokens without a row: refused, not decoded over the rows there are."""
    folder = _copy(tiny_dir("llama"), tmp_path / "m")

    def cut(w):
        w["lm_head.weight"] = w["lm_head.weight"][:300].clone()
        if short == "tokenizer":  # weights and config agree; the tokenizer has 394 tokens
            w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"][:300].clone()

    _edit_weights(folder, cut)
    if short == "tokenizer":
        _edit_config(folder, vocab_size=300)
    err = _neuron_cli(folder, monkeypatch, capsys)
    assert "300 rows" in err and ("vocab_size=394" in err or "394 tokens" in err)


@pytest.mark.parametrize(
    "key", ["lm_head.weight", "model.layers.1.self_attn.k_proj.weight"], ids=["lm_head", "k_proj"]
)
def test_missing_weights_refused(key, tiny_dir, tmp_path, monkeypatch, capsys):
    """An untied model without its head, or without an attention weight: transformers would
    initialise it randomly (and we would decode the embedding); refused, naming the tensor."""
    folder = _edit_weights(_copy(tiny_dir("llama"), tmp_path / "m"), lambda w: w.pop(key))
    args = ["clamp", str(folder), "L1.3=2", "-p", "the dog", "-n", "1"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    _one_line_exit_2(code, err)
    assert key in err


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool], ids=str)
def test_integer_weight_dtypes_refused(dtype, tiny_dir, tmp_path, monkeypatch, capsys):
    """Integer or bool weights are refused from the safetensors headers, before any tensor
    is read (q_proj is not even one that ``neuron`` reads)."""
    key = "model.layers.1.self_attn.q_proj.weight"

    def cast(w):
        w[key] = (w[key] * 100).to(dtype)

    folder = _edit_weights(_copy(tiny_dir("llama"), tmp_path / "m"), cast)
    err = _neuron_cli(folder, monkeypatch, capsys)
    assert key in err and "floating point" in err


# ------------------------------------------- issue 25, "not yet": unlearn --out cannot be written
def _unlearn_args(tiny: Path, out: Path, *extra: str) -> list[str]:
    return [
        "unlearn", str(tiny), "--concept", "Ancient Rome", "--concepts", "conceptvectors-dev",
        "--method", "ga", "--steps", "2", "--batch-size", "2", "--max-length", "48", "--no-eval",
        "-o", str(out), *extra,
    ]  # fmt: skip


def _no_space(kind: str) -> Exception:
    if kind == "oserror":
        return OSError(errno.ENOSPC, "No space left on device")
    from safetensors import SafetensorError  # what save_pretrained raises on a full disk

    return SafetensorError(
        "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
        '"No space left on device" })'
    )


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
@pytest.mark.parametrize("when", ["output", "checkpoint"])
def test_unlearn_full_disk_is_one_line(kind, when, tiny_dir, tmp_path, monkeypatch, capsys):
    """A full disk while writing the output (or a checkpoint): one line, exit 2, and no
    half-written folder left behind (neither --out nor our temporary folders)."""
    from conceptvec.unlearning import api, train

    if when == "output":

        def save(model, tokenizer, folder, record, state_dict=None):
            (folder / "model.safetensors").write_bytes(b"\0" * 64)  # half-written
            raise _no_space(kind)

        monkeypatch.setattr(api, "save_model", save)
    else:

        def save_checkpoint(self, output_dir=None, state_dict=None):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 64)
            raise _no_space(kind)

        monkeypatch.setattr(train.UnlearnTrainer, "_save", save_checkpoint)
    out = tmp_path / "u"
    code, _, err = run_cli(
        _unlearn_args(tiny_dir("llama"), out, "--save-every", "1"), monkeypatch, capsys
    )
    _one_line_exit_2(code, err)
    assert "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unlearn_read_only_out_is_one_line(how, tiny_dir, tmp_path, monkeypatch, capsys):
    """A read-only folder for --out is reported before the model loads or trains."""
    import tempfile

    parent = tmp_path / "ro"
    parent.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder; see the simulated case")
        parent.chmod(0o555)
    else:
        real = tempfile.mkdtemp

        def read_only(*args, dir=None, **kw):
            if dir is not None and Path(dir) == parent:
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    loaded = []
    monkeypatch.setattr(conceptvec.models.loading, "_from_folder", lambda *a, **k: loaded.append(1))
    try:
        code, _, err = run_cli(_unlearn_args(tiny_dir("llama"), parent / "u"), monkeypatch, capsys)
    finally:
        parent.chmod(0o755)
    _one_line_exit_2(code, err)
    assert ("Read-only" in err or "Permission denied" in err) and not loaded
    assert list(parent.iterdir()) == []


# --------------------------------------- issue 25, "not yet": a deep copy inside intervene
def _our_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_deep_copy_inside_intervene_drops_our_hooks(tiny_dir):
    """``copy.deepcopy(model.hf)`` inside a block (to run a copy in another thread) gives the
    unedited model: the copied hooks do nothing and leave on the copy's first pass. The
    original is edited until the block ends, then restored bit-exactly."""
    import copy

    model = conceptvec.load(tiny_dir("llama"))
    hf = model.hf
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    with torch.no_grad():
        base = hf(ids).logits
        edits = [conceptvec.clamp("L1.3", 8.0), conceptvec.steer(2, torch.ones(32), 3.0)]
        with conceptvec.intervene(model, edits):
            edited = hf(ids).logits
            twin = copy.deepcopy(hf)
            assert torch.equal(twin(ids).logits, base) and _our_hooks(twin) == 0
            assert torch.equal(hf(ids).logits, edited)  # the original keeps its edits
        assert not torch.allclose(edited, base)
        assert torch.equal(hf(ids).logits, base) and _our_hooks(hf) == 0
        assert all(torch.equal(v, before[k]) for k, v in hf.state_dict().items())
        assert torch.equal(twin(ids).logits, base)


# ------------------------------------- issue 25, "not yet": a concept name over 255 bytes
LONG_NAMES = ["Ancient Rome and " * 20 + "its legacy", "Ancient Rome and " * 20 + "its roads"]


def test_lm_eval_long_concept_names_are_shortened_with_a_hash(tiny_dir, tmp_path):
    """Task files are named after the concept: a 350-byte name is cut and hashed, so the
    files can be written and two long names that share a beginning keep their own tasks."""
    from conceptvec.plugins import export_lm_eval

    rome = next(r for r in json.loads(SAMPLE.read_text()) if r["Concept"] == "Ancient Rome")
    fast = dict(sets=["completion"], max_new_tokens=2, batch_size=4)
    tags = []
    for i, name in enumerate(LONG_NAMES):
        out = tmp_path / f"export{i}"
        ex = export_lm_eval(tiny_dir("llama"), [{**rome, "Concept": name}], name, out, **fast)
        assert ex.concept == name and all(len(p.name.encode()) <= 255 for p in out.iterdir())
        tags.append(ex.tag)
    assert tags[0] != tags[1] and tags[0].startswith("conceptvec_ancient_rome_and")


@pytest.mark.parametrize("out", ["default", "explicit"])
def test_unlearn_long_output_names(out, tiny_dir, tmp_path, monkeypatch, capsys):
    """``unlearn`` names its default --out after the concept: a long name is cut and hashed.
    An explicit --out too long for a file name is one line, exit 2, before any work."""
    rome = next(r for r in json.loads(SAMPLE.read_text()) if r["Concept"] == "Ancient Rome")
    name = " ".join(["Ρώμη"] * 60)  # 539 bytes
    concepts = tmp_path / "c.json"
    concepts.write_text(json.dumps([{**rome, "Concept": name}]))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [
        "unlearn", str(tiny_dir("llama")), "--concept", name, "--concepts", str(concepts),
        "--method", "ga", "--steps", "1", "--batch-size", "2", "--max-length", "48", "--no-eval",
    ]  # fmt: skip
    if out == "explicit":
        code, _, err = run_cli([*args, "-o", "u" * 250], monkeypatch, capsys)
        _one_line_exit_2(code, err)
        assert "250 bytes long" in err and list(work.iterdir()) == []
        return
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    (folder,) = work.iterdir()
    assert folder.name.startswith("unlearned-ρώμη-") and folder.name.endswith("-ga")
    assert len(folder.name.encode()) <= 100 and (folder / "unlearning.json").is_file()
