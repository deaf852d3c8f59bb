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


def test_long_runs_show_progress_on_stderr_only(folder, monkeypatch, capsys):
    args = ["clamp", folder, "L1.3=5", "-p", "The dog", "-t", " dog", "--controls", "3"]
    code, out, err = run_cli([*args, "-n", "2", "--json"], monkeypatch, capsys)
    assert code == 0, err
    json.loads(out)  # stdout is the JSON alone
    assert "measuring effect" in err and "/7 [" in err  # before, after, 3 controls, 2 generations


def test_target_without_its_leading_space_warns_in_one_line(folder, monkeypatch, capsys):
    # "is" and " is" are both single tokens of the tiny tokenizer; after "The dog" the word
    # would be " is"
    args = ["clamp", folder, "L1.3=5", "-p", "The dog", "-n", "0"]
    code, _, err = run_cli([*args, "-t", "is"], monkeypatch, capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "' is'" in warned[0]
    code, _, err = run_cli([*args, "-t", " is"], monkeypatch, capsys)
    assert code == 0 and "warning:" not in err
    code, _, err = run_cli(
        ["clamp", folder, "L1.3=5", "-p", "The dog ", "-n", "0", "-t", "is"], monkeypatch, capsys
    )
    assert code == 0 and "warning:" not in err  # after a space, the bare token is right


def test_ablate_prints_the_activation_before_the_edit(folder, monkeypatch, capsys):
    from conceptvec import load, read_activations

    acts = read_activations(load(folder), ["The dog"], ["L1.3", "L1.4"])
    args = ["ablate", folder, "L1.3", "L1.4", "-p", "The dog", "-n", "0"]
    code, out, err = run_cli([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    before = json.loads(out)["activation_before"]
    assert [r["neuron"] for r in before] == ["L1.3", "L1.4"]
    for r in before:
        assert r["mean"] == pytest.approx(acts.mean(r["neuron"]), abs=1e-6)
    code, out, _ = run_cli(args, monkeypatch, capsys)
    assert code == 0
    for r in before:
        assert f"{r['neuron']} before the edit: mean activation {r['mean']:+.4g}" in out
        note = f"note: {r['neuron']} fires negatively here"
        assert (note in out) == (r["mean"] < 0)
    assert any(r["mean"] < 0 for r in before)  # the note is exercised
