"""Unlearning methods on a tiny random Llama: each forgets, scopes hold, edits are exact,
bad input fails in one line with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conceptvec.concepts import ConceptEntry, read_concepts
from conceptvec.data import concepts_file
from conceptvec.errors import UnlearningError as MethodsError
from conceptvec.unlearning import METHODS, UnlearningError, unlearn
from conceptvec.unlearning.data import IDK_ANSWERS, Example, Tokenising, _pad, chunk_text, halves
from conceptvec.unlearning.methods import Context

SAMPLE = concepts_file("conceptvectors-dev")
FAST = dict(max_length=48, max_new_tokens=6, batch_size=2, evaluate=False, progress=False)


@pytest.fixture(scope="module")
def entries():
    return read_concepts(SAMPLE)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("llama")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _base(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny).eval()


def _forget_term(name, model, ref, tiny, entries, hparams, control=None):
    """The method's forget term on a fixed batch of Rome text (and idk answers for DPO)."""
    from transformers import AutoTokenizer

    from conceptvec.models.backends import resolve

    tok = AutoTokenizer.from_pretrained(tiny)
    tk = Tokenising(resolve(model, tok), 48)
    rome = next(e for e in entries if e.concept == "Ancient Rome")
    forget = [tk.text(c) for c in chunk_text(rome.wikipedia_content)[:4]]
    other = [tk.text(c) for c in chunk_text(entries[0].wikipedia_content)[:4]]
    pad = tok.eos_token_id
    batches = {"forget": _pad(forget, pad), "retain": _pad(other, pad)}
    m = METHODS[name]
    if name == "dpo":
        forget = [halves(e) for e in forget]
        ids = tok(" " + IDK_ANSWERS[0], add_special_tokens=False)["input_ids"]
        batches["forget"] = _pad(forget, pad)
        batches["idk"] = _pad([Example(e.prompt, ids, "text") for e in forget], pad)
    loss = m.loss if name != "needle" else METHODS["ga"].loss
    layers = model.model.layers
    ctx = Context(model, ref, hparams, control, layers, ref.model.layers if ref else None)
    with torch.no_grad():
        return float(loss(ctx, batches)["forget"])


@pytest.mark.parametrize(
    "name", ["ga", "gd", "npo", "npo-gd", "npo-kl", "simnpo", "dpo", "rmu", "needle"]
)
def test_each_method_lowers_its_forget_objective(name, tiny, entries):
    # a random model learns plain language fast, so a strong retain term would lower every
    # NLL; a small retain weight isolates the forget term this test is about
    extra = {"retain_weight": 0.1} if METHODS[name].retain_key == "retain_weight" else {}
    extra.update({"beta": 0.5, "forget_weight": 1.0} if name == "simnpo" else {})
    extra.update({"alpha": 1.0} if name == "rmu" else {})
    lr = {"needle": 0.05, "rmu": 3e-3}.get(name, 2e-3)
    r = unlearn(
        tiny, "Ancient Rome", name, concepts=entries, steps=6, lr=lr, neuron="L1.5", **FAST, **extra
    )
    h = r.record["hyperparameters"]
    control = None
    if name == "rmu":
        d = r.model.config.hidden_size
        u = torch.rand(d, generator=torch.Generator().manual_seed(0))
        control = (h["steering_coeff"] * u / u.norm())[None, None, :]
    base = _base(tiny)
    before = _forget_term(name, base, _base(tiny), tiny, entries, h, control)
    after = _forget_term(name, r.model.eval(), base, tiny, entries, h, control)
    assert after < before, (name, before, after)
    assert len(r.record["history"]) == 6
    assert r.record["data"]["heldout_qa"] and not set(r.record["data"]["heldout_qa"]) & set(
        r.record["data"]["forget_qa"]
    )


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize(
    "scope, allowed",
    [
        ("down", lambda k: "down_proj" in k),
        ("down:1-1", lambda k: k == "model.layers.1.mlp.down_proj.weight"),
        ("layers:1-2", lambda k: k.startswith(("model.layers.1.", "model.layers.2."))),
        ("full", lambda k: True),
    ],
)
def test_scopes_leave_everything_else_bit_identical(scope, allowed, tiny, entries):
    base = _state(_base(tiny))
    r = unlearn(tiny, "Ancient Rome", "gd", concepts=entries, steps=2, lr=1e-3, scope=scope, **FAST)
    changed = _changed(base, _state(r.model))
    assert changed and all(allowed(k) for k in changed), sorted(changed)
    if scope == "layers:1-2":
        assert "model.layers.2.mlp.up_proj.weight" in changed


@pytest.mark.parametrize("method", ["needle", "npo"])
def test_vector_scope_and_needle_change_one_column(method, tiny, entries):
    base = _state(_base(tiny))
    r = unlearn(
        tiny, "Ancient Rome", method, concepts=entries, steps=3, lr=1e-2, scope="vector",
        neuron="L1.5", weight_decay=0.1, **FAST,
    )  # fmt: skip
    after = _state(r.model)
    key = "model.layers.1.mlp.down_proj.weight"
    assert _changed(base, after) == {key}
    keep = torch.ones(base[key].shape[1], dtype=torch.bool)
    keep[5] = False
    assert torch.equal(base[key][:, keep], after[key][:, keep])
    assert not torch.equal(base[key][:, 5], after[key][:, 5])
    assert r.record["trainable_parameters"] == base[key].shape[0]  # one column, not the matrix


@pytest.mark.parametrize("mode", ["zero", "reverse"])
def test_edit_is_exact(mode, tiny, entries):
    base = _state(_base(tiny))
    r = unlearn(tiny, "Ancient Rome", "edit", concepts=entries, neuron="L2.7", mode=mode, **FAST)
    after = _state(r.model)
    key = "model.layers.2.mlp.down_proj.weight"
    assert _changed(base, after) == {key}
    want = base[key].clone()
    want[:, 7] = 0 if mode == "zero" else -want[:, 7]
    assert torch.equal(after[key], want)
    assert r.record["steps_done"] == 0


def test_neuron_find_edits_the_vector_the_finder_chooses(tiny):
    import conceptvec
    from conceptvec.concepts import find_concept

    # the tiny tokenizer knows Harry Potter, not Rome
    text = "Harry Potter went to Hogwarts with Ron and Hermione. Harry Potter and Ron went."
    qa = ["Who went to Hogwarts?", "Who are Ron and Hermione?", "Where did Harry Potter go?"]
    entry = ConceptEntry(concept="Harry Potter", wikipedia_content=text, qa=qa)
    search = find_concept(
        conceptvec.load(tiny, quiet=True), "Harry Potter", texts=[text], qa=qa, progress=False
    )
    chosen = (search.validated or search.candidates)[0].neuron
    base = _state(_base(tiny))
    r = unlearn(tiny, entry, "edit", neuron="find", **FAST)
    assert r.record["neuron"] == chosen
    layer, index = (int(x) for x in chosen[1:].split("."))
    key = f"model.layers.{layer}.mlp.down_proj.weight"
    after = _state(r.model)
    assert _changed(base, after) == {key}
    assert not after[key][:, index].any() and base[key][:, index].any()


def test_output_folder_opens_everywhere_and_records_the_run(tiny, entries, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    import conceptvec

    out = tmp_path / "rome-gd"
    r = unlearn(
        tiny, "Ancient Rome", "gd", concepts=entries, steps=2, out=out, **{**FAST, "evaluate": True}
    )
    rec = json.loads((out / "unlearning.json").read_text())
    for key in ("method", "hyperparameters", "concept", "data", "seed", "base_model", "steps",
                "wall_seconds", "final_losses", "evaluation", "scope"):  # fmt: skip
        assert key in rec, key
    assert rec["hyperparameters"]["retain_weight"] == 1.5
    assert rec["data"]["qa_split"] == "heldout"
    ev = rec["evaluation"]["forget_qa"]
    assert ev["before"]["questions"] == rec["data"]["heldout_qa"]
    assert rec["base_model"]["fingerprint"] != rec["fingerprint"]
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(
        hf.model.layers[0].mlp.down_proj.weight, r.model.model.layers[0].mlp.down_proj.weight
    )
    m = conceptvec.load(out)
    assert m.dims.n_layers == 3 and m.tokenizer is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or work dirs
    assert "gd on 'Ancient Rome'" in str(r)


def test_user_forget_and_retain_files(tiny, tmp_path):
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"question": "Who founded Rome?", "answer": "Romulus."}\n')
    retain = tmp_path / "retain.txt"
    retain.write_text("Dogs bark.\nCats purr.\n")
    r = unlearn(tiny, "Rome", "gd", forget_file=forget, retain_file=retain, steps=2, **FAST)
    data = r.record["data"]
    assert data["forget_qa"] == ["Who founded Rome?"] and data["retain_text"] == 2


# ----------------------------------------------------------------------------- bad input
def test_unlearning_error_is_one_class():
    assert MethodsError is UnlearningError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="forget-everything"), "unknown method"),
        (dict(method="gd", scope="layers:2-9"), "layers 2..9"),
        (dict(method="gd", scope="wide"), "unknown scope"),
        (dict(method="gd", lr=float("nan")), "lr must be"),
        (dict(method="gd", lr=float("inf")), "lr must be"),
        (dict(method="gd", lr=-1e-5), "lr must be"),
        (dict(method="npo", beta=-1), "beta"),
        (dict(method="gd", gamma=3), "no hyperparameter 'gamma'"),
        (dict(method="needle"), "needs the concept vector"),
        (dict(method="edit", neuron="L9.1"), "layer"),
    ],
)
def test_bad_settings(kwargs, message, tiny, entries, tmp_path):
    with pytest.raises(UnlearningError if "layer" not in message else Exception) as e:
        unlearn(
            tiny, "Ancient Rome", concepts=entries, steps=1, out=tmp_path / "o", **FAST, **kwargs
        )
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_empty_forget_set_and_missing_retain(tiny, tmp_path):
    with pytest.raises(UnlearningError, match="no questions or text to unlearn"):
        unlearn(tiny, "Nothing", "ga", steps=1, out=tmp_path / "o", **FAST)
    lone = ConceptEntry(concept="Lone", wikipedia_content="A lone fact. " * 40)
    with pytest.raises(UnlearningError, match="needs a retain set"):
        unlearn(tiny, lone, "gd", steps=1, out=tmp_path / "o", **FAST)
    unlearn(tiny, lone, "gd", steps=1, retain_weight=0, **FAST)  # without retain it runs
    assert not list(tmp_path.iterdir())


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_never_replaces_a_users_folder(tiny, entries, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    kw = dict(concepts=entries, steps=1, out=out, **FAST)
    with pytest.raises(UnlearningError, match="exists; pass --overwrite"):
        unlearn(tiny, "Ancient Rome", "ga", **kw)
    with pytest.raises(UnlearningError, match="did not write") as e:
        unlearn(tiny, "Ancient Rome", "ga", overwrite=True, **kw)
    assert "\n" not in str(e.value)
    # a folder whose unlearning.json is not ours (no files list) is refused alike
    (out / "unlearning.json").write_text('{"schema": 1, "method": "ga"}')
    with pytest.raises(UnlearningError, match="did not write"):
        unlearn(tiny, "Ancient Rome", "ga", overwrite=True, **kw)
    assert (out / "keep.txt").read_text() == "mine"
    assert _names(tmp_path) == ["o"]  # no temporary or work folder left behind


def test_overwrite_replaces_an_earlier_output_or_an_empty_folder(tiny, entries, tmp_path):
    import json

    out = tmp_path / "o"
    kw = dict(concepts=entries, steps=1, out=out, **FAST)
    unlearn(tiny, "Ancient Rome", "ga", **kw)
    first = json.loads((out / "unlearning.json").read_text())
    assert first["written_by"] == "conceptvec unlearn" and first["files"] == _names(out)
    unlearn(tiny, "Ancient Rome", "gd", overwrite=True, **kw)
    second = json.loads((out / "unlearning.json").read_text())
    assert second["method"] == "gd" and second["files"] == _names(out)
    assert _names(tmp_path) == ["o"]
    # a file the user added to our output makes it theirs: refused, nothing lost
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UnlearningError, match="did not write"):
        unlearn(tiny, "Ancient Rome", "ga", overwrite=True, **kw)
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "unlearning.json").read_text())["method"] == "gd"
    empty = tmp_path / "empty"
    empty.mkdir()
    unlearn(tiny, "Ancient Rome", "ga", **{**kw, "out": empty}, overwrite=True)
    assert (empty / "unlearning.json").exists()


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_a_users_hidden_run_folder_is_never_used_or_removed(flags, tiny, entries, tmp_path):
    work = tmp_path / ".o.run"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    with pytest.raises(UnlearningError, match="not made by conceptvec unlearn"):
        unlearn(
            tiny, "Ancient Rome", "ga", concepts=entries, steps=1, out=tmp_path / "o",
            **FAST, **flags,
        )  # fmt: skip
    assert _names(work) == ["mine.txt"] and _names(tmp_path) == [".o.run"]


def test_sharded_launch_refuses_the_evaluation_up_front(tiny, entries, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UnlearningError, match="whole model in one process.*--no-eval"):
        unlearn(tiny, "Ancient Rome", "ga", concepts=entries, steps=1, **{**FAST, "evaluate": True})


def test_quantized_model_is_refused(tiny, entries):
    hf = _base(tiny)
    hf.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    from transformers import AutoTokenizer

    import conceptvec

    m = conceptvec.load(hf, tokenizer=AutoTokenizer.from_pretrained(tiny))
    with pytest.raises(UnlearningError, match="quantized .* float"):
        unlearn(m, "Ancient Rome", "ga", concepts=entries, steps=1, **FAST)


def test_nan_loss_stops_keeps_last_good_checkpoint(tiny, entries, tmp_path):
    out = tmp_path / "o"
    kw = dict(concepts=entries, steps=6, save_every=1, out=out, **FAST)
    with pytest.raises(UnlearningError) as e:
        unlearn(tiny, "Ancient Rome", "ga", lr=1e30, **kw)
    msg = str(e.value)
    assert "loss became" in msg and "last good checkpoint" in msg and "\n" not in msg
    assert not out.exists()
    work = tmp_path / ".o.run"
    assert any(p.name.startswith("checkpoint-") for p in work.iterdir())
    # the interrupted run is ours: kept unless the user resumes it or starts over
    with pytest.raises(UnlearningError, match="interrupted run; pass --resume"):
        unlearn(tiny, "Ancient Rome", "ga", lr=1e-3, **kw)
    unlearn(tiny, "Ancient Rome", "ga", lr=1e-3, overwrite=True, **{**kw, "steps": 1})
    assert _names(tmp_path) == ["o"]


def test_caller_model_is_not_changed(tiny, entries):
    hf = _base(tiny)
    before = _state(hf)
    from transformers import AutoTokenizer

    import conceptvec

    m = conceptvec.load(hf, tokenizer=AutoTokenizer.from_pretrained(tiny))
    unlearn(m, "Ancient Rome", "ga", concepts=entries, steps=1, lr=1e-2, **FAST)
    assert not _changed(before, _state(hf))


def test_chunks_keep_the_space_between_sentences():
    text = "Rome is old. It has seven hills.\nThe Tiber runs through it."
    assert chunk_text(text, limit=20) == [
        "Rome is old. It has seven hills.",
        "The Tiber runs through it.",
    ]
    assert " ".join(chunk_text(text, limit=1)) == text.replace("\n", " ")


def test_default_threads_leaves_the_cores_other_jobs_use():
    """Idle, a run takes torch's threads; with every core busy in other processes, one
    (measured on the 2-core VM: one thread beat two under load, two beat one idle)."""
    import os
    import subprocess
    import sys

    from conceptvec.unlearning.api import _cpu_busy, default_threads

    if _cpu_busy() is None:
        pytest.skip("no /proc/stat here")
    cores = min(os.cpu_count() or 1, 8)
    if cores < 2:
        pytest.skip("one core: nothing to leave")
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    spin = "import time\nt = time.time()\nwhile time.time() - t < 20: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]
    try:
        import time

        time.sleep(0.5)
        assert default_threads(sample=0.5) == 1
    finally:
        for p in procs:
            p.kill()
        torch.set_num_threads(before)
    torch.set_num_threads(1)
    try:
        assert default_threads() == 1  # OMP_NUM_THREADS=1 (the grid's shards) is kept
    finally:
        torch.set_num_threads(before)
