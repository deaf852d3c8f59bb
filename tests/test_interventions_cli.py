"""``conceptvec clamp`` and ``conceptvec ablate`` on a tiny saved model: output and errors."""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli


@pytest.fixture
def folder(tiny_dir):
    return str(tiny_dir("llama"))


def test_clamp_json(folder, monkeypatch, capsys):
    args = ["clamp", folder, "L1.3=5", "L2.7=-3", "--prompt", "The dog", "--prompt", "Paris is"]
    args += ["--targets", " dog", "--targets", " cat", "--controls", "3", "-n", "3", "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["intervention"] == ["clamp L1.3=5", "clamp L2.7=-3"]
    assert data["targets"] == [" dog", " cat"] and len(data["controls"]) == 3
    assert [p["prompt"] for p in data["prompts"]] == ["The dog", "Paris is"]
    first = data["prompts"][0]
    assert len(first["top_after"]) == 5 and isinstance(first["generation_after"], str)
    assert 0 <= first["percentile"] <= 100 and len(first["targets"]) == 2


def test_clamp_text_and_positions(folder, monkeypatch, capsys):
    args = ["clamp", folder, "L1.3=5", "-p", "The dog", "--positions", "last", "-n", "0"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "clamp L1.3=5 @last" in out and "top after:" in out and "generation" not in out


@pytest.mark.parametrize("mode", ["zero", "mean", "noise"])
def test_ablate_modes(folder, mode, monkeypatch, capsys, tmp_path):
    args = ["ablate", folder, "L1.3", "L1.4", "-p", "The dog", "--mode", mode, "-n", "0"]
    if mode == "mean":
        ref = tmp_path / "ref.txt"
        ref.write_text("The cat sat.\n\nParis is the capital of France.\n")
        args += ["--reference", str(ref)]
    if mode == "noise":
        args += ["--std", "0.5", "--matrix", "up", "--relative"]
    code, out, err = run_cli([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    want = {
        "zero": ["zero L1.3", "zero L1.4"],
        "mean": ["mean L1.3=", "mean L1.4="],
        "noise": ["noise L1.3 up", "noise L1.4 up"],
    }[mode]
    assert all(got.startswith(w) for got, w in zip(data["intervention"], want)), data


@pytest.mark.parametrize(
    "args, message",
    [
        (["clamp", "{m}", "L1.3:5", "-p", "x"], "L<layer>.<index>=<value>"),
        (["clamp", "{m}", "L1.3=inf", "-p", "x"], "must be finite"),
        (["clamp", "{m}", "L1.3=five", "-p", "x"], "must be a number"),
        (["clamp", "{m}", "L3.3=1", "-p", "x"], "layer 3 is out of range"),
        (["clamp", "{m}", "L1.64=1", "-p", "x"], "neuron 64 is out of range"),
        (["clamp", "{m}", "L1.3=1"], "no prompt given"),
        (["clamp", "{m}", "L1.3=1", "-p", "x", "--positions", "end"], "unknown positions"),
        (["clamp", "{m}", "L1.3=1", "-p", "x", "--chat"], "no chat template"),
        (["clamp", "{m}", "L1.3=1", "-p", "x", "-t", " dog chased"], "single tokens"),
        (["clamp", "{m}", "L1.3=1", "-p", "x", "--controls", "5"], "pass targets"),
        (["ablate", "{m}", "L1.3", "-p", "x", "--mode", "half"], "unknown --mode"),
        (["ablate", "{m}", "L1.3", "-p", "x", "--mode", "noise", "--std", "nan"], "finite"),
        (
            ["ablate", "{m}", "L1.3", "-p", "x", "--mode", "mean", "--reference", "/no"],
            "not a file",
        ),
        (["ablate", "{m}", "dog", "-p", "x"], "cannot read neuron id"),
    ],
)
def test_bad_input_exits_2_with_one_line(folder, args, message, monkeypatch, capsys):
    code, out, err = run_cli([a.replace("{m}", folder) for a in args], monkeypatch, capsys)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
