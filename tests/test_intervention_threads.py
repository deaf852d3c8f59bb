"""Interventions under threads and out-of-order exits (issue 12, defect 3): whatever the
interleaving, the weights end bit-identical, no hook is left, and misuse is a clear error."""

from __future__ import annotations

import random
import threading
from contextlib import ExitStack

import pytest
import torch

import conceptvec
from conceptvec.errors import InterventionInUseError
from conceptvec.interventions import clamp, guard, intervene, noise, replace_weights, zero_weights

from .conftest import build_tiny


@pytest.fixture()
def hf():
    model, _ = build_tiny("llama")
    return model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_non_lifo_exit_restores_originals(hf):
    before = _snapshot(hf)
    outer = intervene(hf, [noise("L1.3", 0.5, seed=1)], check=False)
    inner = intervene(hf, [noise("L1.3", 0.5, seed=2), zero_weights("L1.4")], check=False)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the outer block ends first
    # what is left is the inner edit alone, computed from the original vector
    alone = intervene(hf, [noise("L1.3", 0.5, seed=2)], check=False)
    inner_only = hf.model.layers[1].mlp.down_proj.weight[:, 3].clone()
    inner.__exit__(None, None, None)
    assert _same(hf, before) and guard.active() == 0
    with alone:
        assert torch.equal(hf.model.layers[1].mlp.down_proj.weight[:, 3], inner_only)
    assert _same(hf, before)


def test_random_exit_orders_restore(hf):
    before = _snapshot(hf)
    rng = random.Random(0)
    for trial in range(20):
        blocks = [
            intervene(hf, [noise("L1.3", 0.3, seed=trial * 10 + i)], check=False) for i in range(4)
        ]
        blocks.append(intervene(hf, [replace_weights("L1.3", torch.ones(32))], check=False))
        for b in blocks:
            b.__enter__()
        rng.shuffle(blocks)
        for b in blocks:
            b.__exit__(None, None, None)
        assert _same(hf, before), f"trial {trial}"
    assert guard.active() == 0 and _hooks(hf) == 0


def test_one_intervention_entered_twice(hf):
    iv = intervene(hf, [clamp("L1.3", 5.0)], check=False)
    with iv:
        with pytest.raises(InterventionInUseError, match="already active"):
            iv.__enter__()
    assert _hooks(hf) == 0


def test_one_intervention_two_threads(hf):
    """One Intervention entered by two threads: one gets a clear error, nothing is left."""
    before = _snapshot(hf)
    iv = intervene(hf, [noise("L1.3", 1.0), clamp("L0.2", 3.0)], check=False)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def enter():
        barrier.wait()
        try:
            with iv:
                hf(torch.tensor([[1, 2, 3]]))
        except InterventionInUseError as e:
            errors.append(e)

    for _ in range(30):
        threads = [threading.Thread(target=enter) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _same(hf, before) and _hooks(hf) == 0
    assert guard.active() == 0


def test_cross_thread_exit_is_an_error_and_restores(hf):
    before = _snapshot(hf)
    iv = intervene(hf, [noise("L1.3", 1.0)], check=False)
    iv.__enter__()
    box: list[BaseException] = []

    def leave():
        try:
            iv.__exit__(None, None, None)
        except InterventionInUseError as e:
            box.append(e)

    t = threading.Thread(target=leave)
    t.start()
    t.join()
    assert box and "another thread" in str(box[0])
    assert _same(hf, before) and _hooks(hf) == 0


def test_thread_stress(hf):
    """Eight threads enter and leave blocks on one model at random; at the end the weights
    are bit-identical, no hook is left, and every refusal was an InterventionInUseError."""
    before = _snapshot(hf)
    ids = torch.tensor([[1, 2, 3, 4]])
    outcomes = {"ran": 0, "refused": 0}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(seed: int):
        rng = random.Random(seed)
        for step in range(15):
            edits = [noise(f"L{rng.randrange(3)}.{rng.randrange(4)}", 0.5, seed=step)]
            if rng.random() < 0.5:
                edits.append(clamp(f"L{rng.randrange(3)}.5", 2.0))
            try:
                with ExitStack() as stack:
                    stack.enter_context(intervene(hf, edits, check=False))
                    if rng.random() < 0.5:  # nest a second block in the same thread
                        stack.enter_context(intervene(hf, [zero_weights("L2.7")], check=False))
                    with torch.no_grad():
                        hf(ids)
                with lock:
                    outcomes["ran"] += 1
            except InterventionInUseError:
                with lock:
                    outcomes["refused"] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert outcomes["ran"] > 0
    assert _same(hf, before) and _hooks(hf) == 0 and guard.active() == 0


def test_model_handle_in_threads(tiny_dir):
    """The same through a conceptvec Model (what the CLI and notebooks pass)."""
    model = conceptvec.load(tiny_dir("llama"))
    before = _snapshot(model.hf)
    ids = torch.tensor([[1, 2, 3]])

    def work():
        for _ in range(10):
            try:
                with intervene(model, [noise("L1.3", 1.0)], check=False):
                    model.hf(ids)
            except InterventionInUseError:
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _same(model.hf, before)
