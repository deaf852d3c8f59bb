"""Bad input: one line that says what to do, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

import conceptvec
from conceptvec.errors import (
    CorruptWeightsError,
    ModelNotFoundError,
    NoWeightsError,
    UnsupportedArchitectureError,
)

from .conftest import build_tiny, run_cli
from .tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    hf, tok = build_tiny("llama")
    return write_tiny_gguf(hf, tok, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _scribble(path: Path, offset: int, junk: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(junk)] = junk
    path.write_bytes(bytes(data))


def _case_unknown_alias(tmp, tiny_dir, tiny_gguf):
    return "no-such-model", ModelNotFoundError, "not an alias"


def _case_missing_path(tmp, tiny_dir, tiny_gguf):
    return (
        str(tmp / "nowhere" / "model"),
        ModelNotFoundError,
        "does not exist; pass an existing folder",
    )


def _case_empty_folder(tmp, tiny_dir, tiny_gguf):
    (tmp / "empty").mkdir()
    return str(tmp / "empty"), NoWeightsError, "no config.json and no weights"


def _case_config_without_weights(tmp, tiny_dir, tiny_gguf):
    folder = tmp / "config-only"
    folder.mkdir()
    shutil.copy(tiny_dir("llama") / "config.json", folder)
    return str(folder), NoWeightsError, "no .safetensors weights"


def _case_unsupported_arch(tmp, tiny_dir, tiny_gguf):
    folder = tmp / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return str(folder), UnsupportedArchitectureError, "supported model types: gemma"


def _case_unsupported_gguf_arch(tmp, tiny_dir, tiny_gguf):
    path = tmp / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path), UnsupportedArchitectureError, "architecture 'mamba'"


def _case_truncated_safetensors(tmp, tiny_dir, tiny_gguf):
    folder = _copy(tiny_dir("llama"), tmp / "truncated")
    _truncate(folder / "model.safetensors")
    return str(folder), CorruptWeightsError, "truncated"


def _case_corrupt_safetensors_header(tmp, tiny_dir, tiny_gguf):
    folder = _copy(tiny_dir("llama"), tmp / "scribbled")
    _scribble(folder / "model.safetensors", 8, b"\x00garbage{{{")
    return str(folder), CorruptWeightsError, "re-download"


def _case_missing_shard(tmp, tiny_dir, tiny_gguf):
    folder = _copy(tiny_dir("llama"), tmp / "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"x": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return str(folder), NoWeightsError, "missing"


def _case_truncated_gguf(tmp, tiny_dir, tiny_gguf):
    path = tmp / "truncated.gguf"
    shutil.copy(tiny_gguf, path)
    _truncate(path, 0.6)
    return str(path), CorruptWeightsError, "not a readable GGUF"


def _case_corrupt_gguf_magic(tmp, tiny_dir, tiny_gguf):
    path = tmp / "scribbled.gguf"
    shutil.copy(tiny_gguf, path)
    _scribble(path, 0, b"JUNK")
    return str(path), CorruptWeightsError, "not a readable GGUF"


CASES = [
    _case_unknown_alias,
    _case_missing_path,
    _case_empty_folder,
    _case_config_without_weights,
    _case_unsupported_arch,
    _case_unsupported_gguf_arch,
    _case_truncated_safetensors,
    _case_corrupt_safetensors_header,
    _case_missing_shard,
    _case_truncated_gguf,
    _case_corrupt_gguf_magic,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[6:])
def test_bad_model_input(case, tmp_path, tiny_dir, tiny_gguf, monkeypatch, capsys):
    source, error, fragment = case(tmp_path, tiny_dir, tiny_gguf)
    with pytest.raises(error, match=fragment):
        conceptvec.load(source, quiet=True)
    code, out, err = run_cli(["info", source], monkeypatch, capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["L7.0"], "layer 7 is out of range: this model has layers 0..2"),
        (["L1.64"], "neuron 64 is out of range: layer 1 has neurons 0..63"),
        (["L1.2", "--matrix", "value"], "unknown matrix 'value'"),
        (["one.two"], "cannot read neuron id 'one.two'"),
    ],
)
def test_bad_neuron_input(args, fragment, tiny_dir, monkeypatch, capsys):
    code, out, err = run_cli(["neuron", str(tiny_dir("llama")), *args], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == "error: " + fragment or fragment in err
    assert "Traceback" not in err


def test_gpt2_has_no_gate(tiny_dir, monkeypatch, capsys):
    code, _, err = run_cli(
        ["neuron", str(tiny_dir("gpt2")), "L0.1", "-m", "gate"], monkeypatch, capsys
    )
    assert code == 2 and "not gated" in err


def test_usage_errors_exit_nonzero(tiny_dir, monkeypatch, capsys):
    code, _, err = run_cli(
        ["neuron", str(tiny_dir("llama")), "L0.1", "--k", "0"], monkeypatch, capsys
    )
    assert code == 2 and "Traceback" not in err


def test_config_transformers_cannot_read(tmp_path, tiny_dir, monkeypatch, capsys):
    folder = _copy(tiny_dir("llama"), tmp_path / "broken-config")
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = "not a dict"  # transformers' own validation refuses this
    (folder / "config.json").write_text(json.dumps(config))
    model = conceptvec.load(folder)  # weights-only work does not need the model's config class
    assert conceptvec.decode(model, "L0.1", k=2).top
    with pytest.raises(UnsupportedArchitectureError, match="transformers cannot read"):
        model.hf  # noqa: B018 - building the torch model is where transformers validates


def test_every_user_facing_error_class_lives_in_errors_py():
    """One home for what bad input raises: no ConceptvecError subclass is defined elsewhere.
    (Internal signals, such as the GGUF parser's own error that loading turns into a
    CorruptWeightsError, may stay beside their code.)"""
    import ast

    import conceptvec.errors

    ours = {n for n, v in vars(conceptvec.errors).items() if isinstance(v, type)}
    root = Path(conceptvec.__file__).parent
    strays = []
    for path in root.rglob("*.py"):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")) in ours for b in node.bases
            ):
                strays.append(f"{path.relative_to(root)}:{node.name}")
    assert not strays, strays
