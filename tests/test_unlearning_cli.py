"""``conceptvec unlearn``: a run end to end, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest

from conceptvec.data import concepts_file
from tests.conftest import run_cli

SAMPLE = str(concepts_file("conceptvectors-dev"))
FAST = ["--steps", "1", "--batch-size", "2", "--max-length", "32", "--no-eval"]


def _args(tiny, out, *extra):
    return ["unlearn", str(tiny), "--concept", "Ancient Rome", "--concepts", SAMPLE,
            "--out", str(out), *FAST, *extra]  # fmt: skip


def test_cli_run_writes_a_checkpoint_and_json(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rome"
    code, stdout, err = run_cli(
        _args(tiny_dir("llama"), out, "--method", "npo", "--set", "beta=0.2", "--json"),
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    data = json.loads(stdout)
    assert data["method"] == "npo" and data["hyperparameters"]["beta"] == 0.2
    assert data["out"] == str(out) and (out / "unlearning.json").exists()
    code, stdout, _ = run_cli(["info", str(out), "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(stdout)["layers"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "forget-all"], "unknown method"),
        (["--method", "gd", "--scope", "layers:0-7"], "layers 0..7"),
        (["--method", "gd", "--lr", "nan"], "lr must be"),
        (["--method", "gd", "--lr", "-0.1"], "lr must be"),
        (["--method", "needle"], "needs the concept vector"),
        (["--method", "gd", "--set", "beta"], "KEY=VALUE"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(extra, message, tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(_args(tiny_dir("llama"), out, *extra), monkeypatch, capsys)
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not list(tmp_path.iterdir())


def test_cli_existing_output_and_empty_forget(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    out.mkdir()
    code, _, err = run_cli(_args(tiny_dir("llama"), out, "--method", "ga"), monkeypatch, capsys)
    assert code == 2 and "--overwrite" in err
    (out / "keep.txt").write_text("mine")
    args = _args(tiny_dir("llama"), out, "--method", "ga", "--overwrite")
    code, _, err = run_cli(args, monkeypatch, capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "did not write" in lines[0], err
    assert (out / "keep.txt").read_text() == "mine"
    args = ["unlearn", str(tiny_dir("llama")), "--concept", "Nowhere", "--method", "ga",
            "--out", str(tmp_path / "p"), *FAST]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "--concepts" in err and not (tmp_path / "p").exists()


def test_unknown_concept_lists_eight_names_then_how_many_more(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    args = ["unlearn", str(tiny_dir("llama")), "--concept", "Atlantis", "--concepts", SAMPLE,
            "--out", str(tmp_path / "o"), "--method", "ga", *FAST]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "no concept 'Atlantis'" in err and err.rstrip().endswith("... (2 more)")


def test_checkpoint_modes_follow_the_umask(tiny_dir, tmp_path, monkeypatch, capsys):
    """Not mkdtemp's drwx------ / -rw-------: the modes mkdir and open give (0755/0644)."""
    import os
    import stat

    from conceptvec.files import file_mode

    out = tmp_path / "rome"
    code, _, err = run_cli(_args(tiny_dir("llama"), out, "--method", "ga"), monkeypatch, capsys)
    assert code == 0, err
    files = file_mode()
    assert stat.S_IMODE(os.stat(out).st_mode) == files | (files & 0o444) >> 2
    for f in out.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == files, f


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--concepts", SAMPLE, "--method", "needle"], "needs the concept vector"),
        (["--method", "ga"], "--concepts"),  # a bare name has nothing to unlearn from
        (["--concepts", SAMPLE, "--method", "edit", "--neuron", "L29"], "L29"),
    ],
)
def test_inputs_are_checked_before_the_model_loads(extra, message, tmp_path, monkeypatch, capsys):
    """The model named does not exist: the input error must come first (it used to come
    after 70-90 s of loading)."""
    args = ["unlearn", str(tmp_path / "no-such-model"), "--concept", "Ancient Rome",
            "--out", str(tmp_path / "o"), *extra]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and message in err and "no-such-model" not in err, err


def test_long_stages_say_what_they_do(tiny_dir, tmp_path, monkeypatch, capsys):
    """Answering the training questions and the held-out QA took minutes with no output."""
    args = ["unlearn", str(tiny_dir("llama")), "--concept", "Ancient Rome", "--concepts", SAMPLE,
            "--out", str(tmp_path / "o"), "--method", "ga", "--steps", "1", "--batch-size", "2",
            "--max-length", "32"]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "answering" in err and "held-out QA before" in err and "held-out QA after" in err
