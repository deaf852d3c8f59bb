"""The two-pass atlas (bf16 scores, float32 rescoring, a proof per neuron) equals the float32 one.

Every family's tiny model, every stage of the proof (block bound, token bound, fallback), ties
(ordered by token id), the bound itself checked against every token's true float32 score, and
tests that fail when the bound or the margin is made too small.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import conceptvec
from conceptvec.atlas import Atlas, build, twopass
from conceptvec.atlas import store as atlas_store
from conceptvec.atlas.head import FoldedHead, layer_vectors
from conceptvec.errors import AtlasError

from .conftest import FAMILIES, build_tiny, run_cli


@pytest.fixture(autouse=True, params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Each test runs with one torch thread and with two: the BLAS may pick other float32
    kernels (and so other bits) by thread count, which probe_group must catch."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(params=["compiled", "torch"])
def selection(request, monkeypatch):
    """The selection runs compiled (numba, the CPU default) and as torch ops (what CUDA runs,
    and CPU without numba): both must give the float32 answer."""
    if request.param == "compiled" and not twopass.compiled_selection():
        pytest.skip("numba is not installed")
    if request.param == "torch":
        monkeypatch.setattr(twopass, "compiled_selection", lambda: False)
    return request.param


def _two_pass_applies(model) -> bool:
    """True when the probe finds a group size on this machine with the threads now set; one
    thread must always do (both CPUs we run on, AMD Zen 4 and Intel Sapphire Rapids)."""
    head = FoldedHead(model, torch.device("cpu"), torch.float32, True)
    fast = twopass.choose_precision("auto", head, 3)
    assert fast is not None or torch.get_num_threads() > 1
    return fast is not None


def test_unstable_bits_fall_back_to_float32(monkeypatch):
    """When the float32 bits depend on the GEMM's shape, auto maps in float32 and two-pass
    says why."""
    hf, _ = build_tiny("llama", seed=3)
    head = FoldedHead(conceptvec.load(hf, quiet=True), torch.device("cpu"), torch.float32, True)
    real = twopass.full_scores

    def shaky(x, w, rows=twopass.PLAIN_ROWS):  # a kernel whose last bit depends on the rows
        out = real(x, w, rows)
        return torch.nextafter(out, out + 1) if x.shape[0] < 20 else out

    monkeypatch.setattr(twopass, "full_scores", shaky)
    assert twopass.choose_precision("auto", head, 3) is None
    with pytest.raises(AtlasError, match="other float32 bits for other GEMM shapes"):
        twopass.choose_precision("two-pass", head, 3)


def _shards(path) -> dict[str, dict[str, torch.Tensor]]:
    return {atlas_store.shard_name(la, m): s for la, m, s in Atlas(path).shards()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for key in atlas_store.SHARD_TENSORS:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def _head(model, block: int = 4):
    head = FoldedHead(model, torch.device("cpu"), torch.float32, True)
    fast = twopass.FastHead(head, block)
    group = twopass.probe_group(fast)
    if group is None:
        assert torch.get_num_threads() > 1  # one thread always keeps its bits
        pytest.skip("this BLAS changes float32 bits with the GEMM's shape at this thread count")
    fast.group = group
    return head, fast


def _vectors(model, head) -> torch.Tensor:
    d = model.dims
    mats = ["up", "gate", "down"] if model.spec.gated else ["up", "down"]
    return torch.cat(
        [layer_vectors(model, la, m, head, True) for la in range(d.n_layers) for m in mats]
    )


def _fast_scores(v: torch.Tensor, fast) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(bf16 scores in fast's columns, bound coefficients)`` of vectors ``v``."""
    vb = v.to(torch.bfloat16)
    return vb @ fast.wb.T, twopass._bound_coefficients(v, vb, fast.d_model, fast.n_max)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.usefixtures("selection")
def test_two_pass_atlas_equals_the_float32_atlas(family, tiny_dir, tmp_path):
    model = conceptvec.load(str(tiny_dir(family)), quiet=True)
    for k in (3, 20):
        plain = build.build_atlas(
            model, tmp_path / f"f{k}", k=k, precision="float32", progress=False
        )
        fast = build.build_atlas(model, tmp_path / f"t{k}", k=k, progress=False)
        if not _two_pass_applies(model):
            assert fast.precision == "float32"
            _assert_same(_shards(tmp_path / f"f{k}"), _shards(tmp_path / f"t{k}"))
            continue
        assert (plain.precision, fast.precision) == ("float32", "two-pass")
        assert fast.two_pass.neurons == model.dims.d_mlp * model.dims.n_layers * len(
            Atlas(tmp_path / f"t{k}").matrices
        )
        _assert_same(_shards(tmp_path / f"f{k}"), _shards(tmp_path / f"t{k}"))
        manifest = json.loads((tmp_path / f"t{k}" / "manifest.json").read_text())
        assert manifest["compute"]["precision"] == "two-pass"
        assert all("two_pass_fallback" in e for e in manifest["shards"].values())


@pytest.mark.usefixtures("selection")
def test_every_stage_of_the_proof_gives_the_float32_answer(tiny_dir):
    """Small margins force the token-by-token bound, the retry and the float32 fallback."""
    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    head, fast = _head(model)
    v = _vectors(model, head)
    total = twopass.TwoPassStats()
    for k in (1, 5, 12):
        want = build.project_top_bottom(v, head, k)
        for margin in (0, 2, 6, 40):
            got, stats = twopass.project_two_pass(v, fast, k, build.project_top_bottom, margin)
            for key in want:
                assert torch.equal(want[key], got[key]), (k, margin, key)
            total.add(stats)
    assert total.block_bound and total.token_bound and total.retry and total.fallback


@pytest.mark.usefixtures("selection")
def test_too_small_a_margin_falls_back(tiny_dir):
    model = conceptvec.load(str(tiny_dir("gemma2")), quiet=True)
    head, fast = _head(model)
    v = _vectors(model, head)
    _, stats = twopass.project_two_pass(v, fast, 5, build.project_top_bottom, margin=0)
    assert stats.fallback > len(v) // 10  # the proof refuses what it cannot show
    _, stats = twopass.project_two_pass(v, fast, 5, build.project_top_bottom, margin=40)
    assert stats.fallback < len(v) // 10


def test_the_bound_holds_for_every_token(tiny_dir):
    """U_t >= s32_t >= L_t for every neuron and token, also for large and tiny vectors."""
    model = conceptvec.load(str(tiny_dir("olmo2")), quiet=True)
    head, fast = _head(model)
    base = _vectors(model, head)
    for scale in (1.0, 1e4, 1e-4):
        v = base * scale
        exact = twopass.full_scores(v, head.whole_rows())[:, fast.token]  # fast's columns
        scores, coef = _fast_scores(v, fast)
        scores, r = scores.float(), coef @ fast.token_norms
        assert (exact <= twopass._upper(scores, r)).all()
        assert (exact >= twopass._lower(scores, r)).all()
        err = (exact - scores).abs()
        assert (err > 0.01 * r).any()  # the bound is not vacuous: errors reach 1% of it


@pytest.mark.usefixtures("selection")
def test_non_finite_vectors_fall_back_to_float32(tiny_dir):
    """A NaN or an infinity in a vector (a corrupt checkpoint), or one large enough that its
    scores could overflow: those rows come from the float32 path, the others stay exact; a
    head with an infinity is mapped in float32."""
    model = conceptvec.load(str(tiny_dir("mistral")), quiet=True)
    head, fast = _head(model)
    v = _vectors(model, head)[:64].clone()
    v[3] = math.nan
    v[5, 0] = math.inf
    v[7, 1] = -math.inf
    v[9] = 1e37  # finite, but too large for the bound to rule out overflow
    want = build.project_top_bottom(v, head, 5)
    got, stats = twopass.project_two_pass(v, fast, 5, build.project_top_bottom)
    assert stats.fallback == 4
    for key in want:
        assert torch.equal(want[key].isnan(), got[key].isnan()), key
        assert torch.equal(want[key].nan_to_num(), got[key].nan_to_num()), key
    head.whole_rows()[9, 0] = math.inf
    assert twopass.choose_precision("auto", head, 5) is None
    with pytest.raises(AtlasError, match="NaN or infinite"):
        twopass.choose_precision("two-pass", head, 5)


@pytest.mark.usefixtures("selection")
def test_a_bound_too_small_is_caught(tiny_dir, monkeypatch):
    """Without the bound's terms the 'proof' accepts wrong neurons: the equality test fails."""
    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    head, fast = _head(model)
    v = _vectors(model, head)
    want = build.project_top_bottom(v, head, 5)
    monkeypatch.setattr(twopass, "SCALE", 0.0)
    monkeypatch.setattr(twopass, "SLOPE", 0.0)
    got, stats = twopass.project_two_pass(v, fast, 5, build.project_top_bottom, margin=0)
    wrong = (got["top_ids"] != want["top_ids"]).any(1) | (
        got["bottom_ids"] != want["bottom_ids"]
    ).any(1)
    assert wrong.sum() > 0


@pytest.mark.usefixtures("selection")
def test_ties_are_ordered_by_token_id(tmp_path):
    """Duplicated unembedding rows tie for every neuron; a zero neuron ties every token."""
    hf, tok = build_tiny("llama", seed=3)
    with torch.no_grad():
        w = hf.lm_head.weight
        w[10:17] = w[9] * 3  # seven copies of a long row: ties near the top and the bottom
        hf.model.layers[0].mlp.up_proj.weight[5] = 0
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model = conceptvec.load(str(tmp_path / "m"), quiet=True)
    k = 10
    build.build_atlas(model, tmp_path / "f", k=k, precision="float32", progress=False)
    precision = "two-pass" if _two_pass_applies(model) else "auto"
    build.build_atlas(model, tmp_path / "t", k=k, precision=precision, progress=False)
    plain, fast = _shards(tmp_path / "f"), _shards(tmp_path / "t")
    _assert_same(plain, fast)
    head = FoldedHead(model, torch.device("cpu"), torch.float32, True)
    tied = 0
    for name, shard in plain.items():
        layer, matrix = int(name[1:4]), name.split(".")[1]
        full = twopass.full_scores(
            layer_vectors(model, layer, matrix, head, True), head.whole_rows()
        )
        top = full.sort(dim=1, descending=True, stable=True).indices[:, :k]
        bottom = full.sort(dim=1, stable=True).indices[:, :k]
        assert torch.equal(shard["top_ids"].long(), top), name
        assert torch.equal(shard["bottom_ids"].long(), bottom), name
        tied += int((shard["top_values"][:, 1:] == shard["top_values"][:, :-1]).sum())
    assert tied > 0
    zero = plain["L000.up"]
    assert zero["top_ids"][5].tolist() == list(range(k)) == zero["bottom_ids"][5].tolist()


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-4])
def test_compiled_selection_matches_the_torch_ops(tiny_dir, scale):
    """Both sides: the same candidate scores (the keep best of the gathered blocks), and
    limits that bound every other token's true float32 score; the compiled ones at least as
    tight as the torch ops' (which bound a block of one sign by 0) where no tie for the last
    candidate lets the two pick other tokens."""
    select_cpu = pytest.importorskip("conceptvec.atlas.select_cpu", reason="needs numba")
    model = conceptvec.load(str(tiny_dir("qwen2")), quiet=True)
    head, fast = _head(model)
    v = _vectors(model, head) * scale
    exact = twopass.full_scores(v, head.whole_rows())[:, fast.token]  # fast's columns
    scores, coef = _fast_scores(v, fast)
    f = scores.float()
    bmax, bmin = twopass._block_extremes(scores, fast)
    rb = coef @ fast.block_norms
    for keep, gather in ((3, 3), (8, 8), (12, 12), (30, fast.whole)):
        got = select_cpu.select(scores, fast, coef, keep, gather, twopass.SLOPE, twopass.SCALE)
        for side, (cols, lim), extreme in ((0, got[:2], bmax), (1, got[2:], bmin)):
            largest = side == 0
            want_cols, want_lim = twopass._side(
                scores, extreme, coef, rb, fast, keep, gather, largest=largest
            )
            assert cols.shape == (len(v), keep) and (cols.sort(1).values.diff(1) > 0).all()
            assert torch.equal(
                f.gather(1, cols).sort(1).values, f.gather(1, want_cols).sort(1).values
            )
            other = exact.scatter(1, cols, -math.inf if largest else math.inf)
            # up to rounding (other orders) and ties for the last candidate (other tokens)
            slack = 2.0**-20 * want_lim.abs()
            if largest:
                assert (other.amax(1) <= lim).all()
                assert (lim <= want_lim + slack).float().mean() > 0.9
            else:
                assert (other.amin(1) >= lim).all()
                assert (lim >= want_lim - slack).float().mean() > 0.9


def test_compiled_selection_leaves_no_thread_behind(tiny_dir):
    """Its helper threads are joined before it returns, so the CLI's fast exit still applies
    after a two-pass map."""
    import threading

    from conceptvec import cli

    select_cpu = pytest.importorskip("conceptvec.atlas.select_cpu", reason="needs numba")
    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    head, fast = _head(model)
    v = _vectors(model, head)
    scores, coef = _fast_scores(v, fast)
    # enough rows for every thread to take a chunk
    reps = -(-2 * select_cpu.CHUNK // len(v))
    scores, coef = scores.repeat(reps, 1), coef.repeat(reps, *[1] * (coef.dim() - 1))
    started: list[threading.Thread] = []
    joined: list[threading.Thread] = []
    real_start, real_join = threading.Thread.start, threading.Thread.join

    def start(thread: threading.Thread) -> None:
        # only the selection's own helpers: another test's background thread may start one
        # of its own meanwhile (a ThreadPoolExecutor worker did, once, in CI)
        if threading.current_thread() is threading.main_thread():
            started.append(thread)
        real_start(thread)

    def join(thread: threading.Thread, timeout: float | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            joined.append(thread)
        real_join(thread, timeout)

    before = set(threading.enumerate())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threading.Thread, "start", start)
        mp.setattr(threading.Thread, "join", join)
        select_cpu.select(scores, fast, coef, 5, 5, twopass.SLOPE, twopass.SCALE)
    assert len(started) == torch.get_num_threads() - 1
    assert set(started) <= set(joined) and not any(t.is_alive() for t in started)
    assert cli._can_skip_teardown() or any(not t.daemon for t in before - {threading.main_thread()})


def test_precision_option(tiny_dir, tmp_path, monkeypatch, capsys):
    model = str(tiny_dir("qwen2"))
    args = ["map", model, "--export", "none", "-q", "-k", "4"]
    code, out, err = run_cli(args + ["-o", str(tmp_path / "a")], monkeypatch, capsys)
    assert code == 0, err
    if _two_pass_applies(conceptvec.load(model, quiet=True)):
        assert "two-pass:" in out and "redone in float32" in out
    code, out, err = run_cli(
        args + ["-o", str(tmp_path / "b"), "--precision", "float32", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["precision"] == "float32" and report["two_pass"]["neurons"] == 0
    _assert_same(_shards(tmp_path / "a"), _shards(tmp_path / "b"))
    code, out, err = run_cli(
        args + ["-o", str(tmp_path / "c"), "--precision", "fp8"], monkeypatch, capsys
    )
    assert code != 0 and "unknown precision 'fp8'" in err + out
    with pytest.raises(AtlasError, match="too small"):
        build.build_atlas(model, tmp_path / "d", k=200, precision="two-pass", progress=False)


def test_check_exact_notices_other_bits(tiny_dir, monkeypatch):
    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    head, fast = _head(model)
    v = torch.randn(2 * twopass.PLAIN_ROWS + 3, fast.d_model)
    assert twopass.check_exact(v, fast, fast.group) and twopass.plain_is_stable(v, fast)
    monkeypatch.setattr(
        twopass, "full_scores", lambda x, w, rows=32: (x.double() @ w.double().T).float()
    )
    assert not twopass.check_exact(v, fast, fast.group)


@pytest.mark.real_model
def test_smollm2_two_pass_equals_float32():
    """Three layers of every matrix (the full atlas is checked by benchmarks/bench_atlas.py)."""
    model = conceptvec.load("smollm2-135m", quiet=True)
    head = FoldedHead(model, torch.device("cpu"), torch.float32, True)
    fast = twopass.choose_precision("auto", head, 20)
    if fast is None:
        assert torch.get_num_threads() > 1
        pytest.skip("this BLAS changes float32 bits with the GEMM's shape at this thread count")
    total = twopass.TwoPassStats()
    for layer in (0, 15, 29):
        for matrix in ("up", "gate", "down"):
            v = layer_vectors(model, layer, matrix, head, True)
            want = build.project_top_bottom(v, head, 20)
            got, stats = twopass.project_two_pass(v, fast, 20, build.project_top_bottom)
            for key in want:
                assert torch.equal(want[key], got[key]), (layer, matrix, key)
            total.add(stats)
    assert total.fallback < total.neurons // 100


def test_exact_gemms_restores_the_flags_across_threads():
    """The CUDA reduction flags are process-wide: set while any thread maps, restored by the
    last one out even when threads leave in another order than they came."""
    import threading

    flags = torch.backends.cuda.matmul
    before = (flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32)
    flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32 = True, True
    try:
        first_in, second_in, first_may_leave = (threading.Event() for _ in range(3))
        seen = []

        def first():
            with twopass.exact_gemms():
                first_in.set()
                first_may_leave.wait(5)
            seen.append((flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32))

        t = threading.Thread(target=first)
        t.start()
        first_in.wait(5)
        with twopass.exact_gemms():
            second_in.set()
            assert not flags.allow_bf16_reduced_precision_reduction and not flags.allow_tf32
            first_may_leave.set()
            t.join(5)
            assert seen == [(False, False)]  # the first left, this one is still inside
        assert (flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32) == (True, True)
        with pytest.raises(RuntimeError), twopass.exact_gemms():
            raise RuntimeError("boom")
        assert flags.allow_tf32
    finally:
        flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32 = before
