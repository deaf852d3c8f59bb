"""The atlas commands: map, search (weights and atlas), diff, export; errors; torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conceptvec.atlas import Atlas
from conceptvec.errors import AtlasError

from .conftest import run_cli


def test_map_search_export_round_trip(tiny_dir, tmp_path, monkeypatch, capsys):
    folder, out = str(tiny_dir("llama")), tmp_path / "atlas"
    code, stdout, err = run_cli(
        ["map", folder, "--out", str(out), "-k", "5", "--json", "--export", "parquet,neuronpedia"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["complete"] and report["written"] == 9 and len(report["exports"]) == 2
    assert (out / "atlas.parquet").exists() and (out / "neuronpedia" / "batch-0.jsonl.gz").exists()

    atlas = Atlas(out)
    token = atlas.neuron("L0.1", "down").top[0].token
    code, stdout, _ = run_cli(["search", str(out), token, "--exact", "--json"], monkeypatch, capsys)
    assert code == 0
    hits = json.loads(stdout)["hits"]
    assert {"neuron": "L0.1", "matrix": "down"}.items() <= next(
        h for h in hits if h["neuron"] == "L0.1" and h["matrix"] == "down"
    ).items()

    code, stdout, _ = run_cli(["search", folder, token, "--exact", "-n", "3"], monkeypatch, capsys)
    assert code == 0 and "neuron" in stdout and len(stdout.splitlines()) == 4

    code, stdout, _ = run_cli(["map", folder, "--out", str(out), "-k", "5"], monkeypatch, capsys)
    assert code == 0 and "0 shards written, 9 reused" in stdout


def test_map_layers_and_matrices(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"
    args = ["map", str(tiny_dir("gpt2")), "-o", str(out), "--layers", "0,2", "--matrices", "down"]
    code, _, err = run_cli(args + ["--export", "none", "-q"], monkeypatch, capsys)
    assert code == 0, err
    atlas = Atlas(out)
    assert atlas.layers == [0, 2] and atlas.matrices == ["down"] and atlas.complete
    assert not (out / "atlas.parquet").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--layers", "7"], "layer 7 is out of range"),
        (["--layers", "1-x"], "cannot read layers"),
        (["--matrices", "gate"], "no gate matrix"),
        (["--device", "tpu"], "unknown device"),
        (["--dtype", "int8"], "unknown dtype"),
        (["--export", "pdf"], "unknown export"),
        (["-k", "100000"], "k must be between"),
    ],
)
def test_map_bad_input_is_one_line(args, message, tiny_dir, tmp_path, monkeypatch, capsys):
    cmd = ["map", str(tiny_dir("gpt2")), "-o", str(tmp_path / "a"), *args]
    code, _, err = run_cli(cmd, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "shards").exists() or not any(
        (tmp_path / "a" / "shards").iterdir()
    )


def test_map_into_another_models_atlas_is_refused(tiny_dir, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "a")
    assert (
        run_cli(["map", str(tiny_dir("llama")), "-o", out, "-q", "-k", "3"], monkeypatch, capsys)[0]
        == 0
    )
    code, _, err = run_cli(
        ["map", str(tiny_dir("qwen2")), "-o", out, "-k", "3"], monkeypatch, capsys
    )
    assert code == 2 and "made another way" in err and "--overwrite" in err


def test_diff_and_export_commands(tiny_dir, tmp_path, monkeypatch, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        cmd = ["map", str(tiny_dir("olmo")), "-o", out, "-q", "-k", "4", "--export", "none"]
        assert run_cli(cmd, monkeypatch, capsys)[0] == 0
    code, stdout, _ = run_cli(["diff", a, b, "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(stdout)["same_top1"] == 1.0
    code, stdout, _ = run_cli(["diff", a, b], monkeypatch, capsys)
    assert "nothing changed: all 576 neurons keep their top-1 token" in stdout
    code, _, err = run_cli(["diff", a, str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "no manifest.json" in err
    target = tmp_path / "np"
    code, stdout, _ = run_cli(
        ["export", a, "-f", "neuronpedia", "-o", str(target)], monkeypatch, capsys
    )
    assert code == 0 and (target / "batch-0.jsonl.gz").exists()
    code, _, err = run_cli(
        ["export", a, "-f", "parquet,neuronpedia", "-o", "x"], monkeypatch, capsys
    )
    assert code == 2 and "one --format" in err


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tiny_dir, tmp_path):
    """2 ranks on CPU with gloo: layers split across ranks, rank 0 writes the manifest."""
    folder = str(tiny_dir("gemma2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(launcher: list[str], out: str) -> subprocess.CompletedProcess:
        args = ["map", folder, "-o", str(tmp_path / out), "-q", "-k", "6", "--device", "cpu"]
        return subprocess.run(
            [sys.executable, "-m", *launcher, *args, "--export", "none", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    single = run(["conceptvec.cli"], "one")
    assert single.returncode == 0, single.stderr
    torchrun = ["torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--module"]
    dist = run([*torchrun, "conceptvec.cli"], "two")
    assert dist.returncode == 0, dist.stderr[:3000] + "\n...\n" + dist.stderr[-2000:]
    report = json.loads(dist.stdout)
    assert report["complete"] and report["written"] == 9
    one, two = Atlas(tmp_path / "one"), Atlas(tmp_path / "two")
    assert two.manifest["compute"]["world_size"] == 2 and two.complete
    assert one.manifest["shards"].keys() == two.manifest["shards"].keys()
    for entry in one.manifest["shards"].values():
        a = one.shard(entry["layer"], entry["matrix"])
        b = two.shard(entry["layer"], entry["matrix"])
        assert torch.equal(a["top_ids"], b["top_ids"]) and torch.equal(
            a["bottom_ids"], b["bottom_ids"]
        )
        torch.testing.assert_close(a["top_values"], b["top_values"])


@pytest.fixture
def small_atlas(tiny_dir, tmp_path, monkeypatch, capsys):
    """An atlas of the tiny Llama's layers 0-1 (all matrices), k=5."""
    out = tmp_path / "atlas"
    args = ["map", str(tiny_dir("llama")), "-o", str(out), "-k", "5", "--layers", "0-1"]
    code, _, err = run_cli([*args, "-q", "--export", "none"], monkeypatch, capsys)
    assert code == 0, err
    return out


def test_atlas_search_honours_layers_and_counts_ranks_from_1(small_atlas, monkeypatch, capsys):
    atlas = Atlas(small_atlas)
    token = atlas.neuron("L1.2", "down").top[0].token
    args = ["search", str(small_atlas), token, "--exact", "-n", "500", "--json"]
    code, stdout, err = run_cli([*args, "--layers", "1"], monkeypatch, capsys)
    assert code == 0, err
    hits = json.loads(stdout)["hits"]
    assert hits and {h["neuron"].split(".")[0] for h in hits} == {"L1"}
    mine = next(h for h in hits if h["neuron"] == "L1.2" and h["matrix"] == "down")
    assert mine["rank"] == 1  # the neuron's top token: rank 1, as the table shows it
    code, stdout, _ = run_cli(
        ["search", str(small_atlas), token, "--exact", "--layers", "1"], monkeypatch, capsys
    )
    row = next(r for r in stdout.splitlines() if r.startswith("L1.2 ") and " down " in r)
    assert row.split()[2] == "1"
    code, _, err = run_cli([*args, "--layers", "5"], monkeypatch, capsys)
    assert code == 2 and "no layer 5" in err and "--layers 5" in err


@pytest.mark.parametrize("flag", [["--by", "score"], ["--both"]])
def test_atlas_search_refuses_weight_search_options(flag, small_atlas, monkeypatch, capsys):
    code, _, err = run_cli(["search", str(small_atlas), "the", *flag], monkeypatch, capsys)
    assert code == 2 and f"{flag[0]} applies to the search of a model's weights" in err


def test_search_and_map_help_show_what_they_mean(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    _, out, _ = run_cli(["search", "--help"], monkeypatch, capsys)
    text = " ".join(out.split())
    assert "raw" not in text and "zscore" in text and "default: down" in text
    _, out, _ = run_cli(["map", "--help"], monkeypatch, capsys)
    text = " ".join(out.split())
    assert "default: atlas-MODEL" in text and "default: all the model has" in text


def test_map_reports_the_shards_of_this_run(small_atlas, tiny_dir, monkeypatch, capsys):
    """``map --layers 1`` into an atlas of layers 0-1 reused 3 shards, not 6."""
    args = ["map", str(tiny_dir("llama")), "-o", str(small_atlas), "-k", "5", "--layers", "1"]
    code, stdout, err = run_cli([*args, "--export", "none"], monkeypatch, capsys)
    assert code == 0, err
    assert "0 shards written, 3 reused" in stdout


def test_missing_layer_suggests_layers_flag(small_atlas, tiny_dir, tmp_path):
    with pytest.raises(AtlasError, match=r"map --layers 2`"):
        Atlas(small_atlas).neuron("L2.0", "down")
    from conceptvec.atlas import build_atlas

    build_atlas(tiny_dir("llama"), tmp_path / "down", k=3, matrices="down", progress=False)
    with pytest.raises(AtlasError, match=r"map --matrices up`"):
        Atlas(tmp_path / "down").neuron("L2.0", "up")


def test_map_on_a_finished_atlas_leaves_its_exports_alone(
    small_atlas, tiny_dir, monkeypatch, capsys
):
    args = ["map", str(tiny_dir("llama")), "-o", str(small_atlas), "-k", "5", "--layers", "0-1"]
    code, stdout, err = run_cli([*args, "--export", "parquet"], monkeypatch, capsys)
    assert code == 0 and "export:" in stdout, err
    parquet = small_atlas / "atlas.parquet"
    before = parquet.stat().st_mtime_ns
    code, stdout, err = run_cli([*args, "--export", "parquet"], monkeypatch, capsys)
    assert code == 0, err
    assert "0 shards written" in stdout and "nothing to project" in stdout
    assert "export:" not in stdout and parquet.stat().st_mtime_ns == before  # not rewritten


def test_sigterm_cleans_up_like_ctrl_c(small_atlas, monkeypatch, capsys):
    """SIGTERM in the middle of an export: its temporary folder is removed (as on Ctrl-C),
    the exit status is 143, and the next export runs."""
    import os
    import signal

    import conceptvec.atlas.export as export

    real = export._write_batch

    def write_then_terminate(path, batch):
        real(path, batch)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(export, "_write_batch", write_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(["export", str(small_atlas), "--format", "neuronpedia"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 143, err
    assert not [p.name for p in small_atlas.iterdir() if p.name.startswith(".neuronpedia")]
    assert not (small_atlas / "neuronpedia").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    monkeypatch.setattr(export, "_write_batch", real)
    code, _, err = run_cli(["export", str(small_atlas), "--format", "neuronpedia"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 0 and (small_atlas / "neuronpedia" / "batch-0.jsonl.gz").exists(), err
