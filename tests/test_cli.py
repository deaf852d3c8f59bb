"""The command line: info for every family, neuron decoding as text and JSON, aliases."""

from __future__ import annotations

import json

import pytest

from .conftest import FAMILIES, run_cli

EXPECTED_FAMILY = {"mistral": "llama", "qwen2": "llama", "gemma2": "gemma", "gemma3": "gemma"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_info_every_family(family, tiny_dir, monkeypatch, capsys):
    code, out, _ = run_cli(["info", str(tiny_dir(family)), "--json"], monkeypatch, capsys)
    assert code == 0
    info = json.loads(out)
    assert info["family"] == EXPECTED_FAMILY.get(family, family)
    assert info["layers"] == 3 and info["d_model"] == 32
    assert info["norm_style"] in {"rmsnorm", "rmsnorm_1p", "layernorm", "layernorm_noparam"}
    ungated = family in ("gpt2", "gpt_neox")
    assert info["matrices"] == (["up", "down"] if ungated else ["up", "gate", "down"])
    code, text, _ = run_cli(["info", str(tiny_dir(family))], monkeypatch, capsys)
    assert code == 0 and "d_mlp" in text and "tied_embeddings" in text


def test_neuron_json_is_clean_stdout(tiny_dir, monkeypatch, capsys):
    folder = str(tiny_dir("llama"))
    code, out, _ = run_cli(
        ["neuron", folder, "L1.3", "--k", "4", "--json", "--probs"], monkeypatch, capsys
    )
    assert code == 0
    data = json.loads(out)
    assert data["neuron"] == "L1.3" and data["matrix"] == "down"
    assert len(data["top"]) == 4 and len(data["bottom"]) == 4
    assert {"id", "token", "score", "prob"} <= set(data["top"][0])
    assert data["recipe"]["fold_norm"] is True
    code, out, _ = run_cli(
        ["neuron", folder, "L1.3", "L2.0", "-m", "up", "--json"], monkeypatch, capsys
    )
    both = json.loads(out)
    assert [d["neuron"] for d in both] == ["L1.3", "L2.0"] and both[0]["matrix"] == "up"


def test_neuron_text_output(tiny_dir, monkeypatch, capsys):
    code, out, _ = run_cli(
        ["neuron", str(tiny_dir("gemma2")), "L0.1", "--k", "3", "--no-fold"], monkeypatch, capsys
    )
    assert code == 0
    assert "L0.1 (down)" in out and "no norm folding" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 3
    assert '"' in out  # tokens are quoted, so leading spaces are visible


def test_aliases(monkeypatch, capsys):
    code, out, _ = run_cli(["aliases", "--json"], monkeypatch, capsys)
    assert code == 0
    assert json.loads(out)["llama-3.1-8b"]["target"] == "meta-llama/Llama-3.1-8B"
    code, out, _ = run_cli(["aliases"], monkeypatch, capsys)
    assert "smollm2-135m" in out and "(default)" in out
    assert "the default (default)" not in out and out.count("default") == 1


def test_version(monkeypatch, capsys):
    from importlib.metadata import version

    import conceptvec

    code, out, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0 and out.strip() == f"conceptvec {version('conceptvec')}"
    assert conceptvec.__version__ == version("conceptvec")


def test_neuron_reads_an_atlas_folder(tiny_dir, tmp_path, monkeypatch, capsys):
    from conceptvec.atlas import Atlas

    out = tmp_path / "atlas"
    args = ["map", str(tiny_dir("llama")), "-o", str(out), "-k", "5", "-q", "--export", "none"]
    assert run_cli(args, monkeypatch, capsys)[0] == 0
    code, stdout, err = run_cli(
        ["neuron", str(out), "L1.3", "-k", "3", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    stored = Atlas(out).neuron("L1.3")
    data = json.loads(stdout)
    assert [t["token"] for t in data["top"]] == stored.top_tokens[:3]
    assert [t["token"] for t in data["bottom"]] == stored.bottom_tokens[:3]
    code, stdout, _ = run_cli(["neuron", str(out), "L1.3", "-m", "up"], monkeypatch, capsys)
    assert code == 0 and "L1.3 (up)" in stdout
    code, _, err = run_cli(["neuron", str(out), "L1.3", "--probs"], monkeypatch, capsys)
    assert code == 2 and "not probabilities" in err


def test_library_log_messages_reach_stderr(tiny_dir, tmp_path, monkeypatch, capsys):
    """The library logs through ``logging``; the CLI shows those messages on stderr and takes
    its handler away again when it returns."""
    import logging
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), folder)
    (folder / "tokenizer.json").write_text("not a tokenizer")
    code, out, err = run_cli(["neuron", str(folder), "L1.3", "--k", "2"], monkeypatch, capsys)
    assert code == 0 and "L1.3" in out
    assert "conceptvec: no tokenizer for" in err and "tokens are shown as ids" in err
    assert logging.getLogger("conceptvec").handlers == []


def _console(args, **kw):
    """Run the console command the way the installed script does (``conceptvec.cli:run``)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "conceptvec.cli", *args], capture_output=True, text=True, **kw
    )


def test_console_entry_keeps_exit_codes_and_every_byte_of_output(tiny_dir, monkeypatch, capsys):
    folder = str(tiny_dir("llama"))
    args = ["neuron", folder, "L1.3", "L2.0", "L0.1", "--k", "30", "--json"]
    _, expected, _ = run_cli(args, monkeypatch, capsys)
    r = _console(args)
    assert r.returncode == 0 and r.stdout == expected and len(expected) > 4000, r.stderr
    r = _console(["neuron", folder, "L9.0"])  # a user error: one line, exit 2
    assert r.returncode == 2 and r.stderr.startswith("error:") and not r.stdout
    r = _console(["neuron", folder, "L1.3", "--no-such-option"])  # a usage error (click)
    assert r.returncode == 2 and "No such option" in r.stderr
    r = _console(["--version"])
    assert r.returncode == 0 and r.stdout.strip()


def test_the_fast_exit_waits_for_what_still_runs(monkeypatch):
    import threading

    from conceptvec import cli

    assert cli._can_skip_teardown()
    gate = threading.Event()
    worker = threading.Thread(target=gate.wait)  # a non-daemon thread still at work
    worker.start()
    try:
        assert not cli._can_skip_teardown()

        def fail(code):
            raise AssertionError(f"os._exit({code}) while a thread still runs")

        monkeypatch.setattr("os._exit", fail)
        monkeypatch.setattr(cli, "main", lambda: None)
        with pytest.raises(SystemExit) as e:
            cli.run()  # the ordinary exit, which waits for the thread
        assert e.value.code == 0

        def refuse():
            raise SystemExit(3)

        monkeypatch.setattr(cli, "main", refuse)
        with pytest.raises(SystemExit) as e:
            cli.run()
        assert e.value.code == 3
    finally:
        gate.set()
        worker.join()
    assert cli._exit_code(SystemExit("text")) is None and cli._exit_code(SystemExit()) == 0
