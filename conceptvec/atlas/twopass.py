"""Exact top/bottom-k in two passes: score in bf16, rescore a few candidates in float32, prove it.

The float32 atlas keeps, per neuron ``v`` (a row of ``V``, norms already folded, float32), the
k tokens with the largest and smallest ``s32_t = fl32(v . w_t)`` over the folded head ``W``.
On CPUs with bf16 dot-product instructions a bf16 GEMM runs 3-5x faster than float32, so:

1. **Fast pass.** ``F = bf16(v) @ bf16(W).T`` (float32 accumulation; torch returns ``F`` rounded
   to bf16), with the vocabulary sorted by row norm and cut into blocks of similar norm.
   Per side, the ``k + m + GATHER_EXTRA`` blocks with the best extremes are read token by
   token and their ``c = k + m`` best fast scores become candidates. On CPU this selection
   is one compiled pass per row (:mod:`conceptvec.atlas.select_cpu`, numba) where numba is
   installed, and torch operations (:func:`_side`) elsewhere; both give the same candidates.
2. **Exact pass.** Rescore only the candidates with the float32 GEMM the plain path uses
   (:func:`exact_scores`: groups of ``G`` vectors against their candidates' rows, 64
   vectors at a time so that their rows are still in cache for the GEMM). The BLAS
   gives each element the same bits whatever the GEMM's shape once it has enough rows: 4
   on the AMD Zen 4 VM (one thread), 16 on an Intel Sapphire Rapids (one or two threads).
   :func:`probe_group` finds the smallest such ``G`` in :data:`GROUPS` at run time, on the
   shapes this run will use, and the plain path pads its GEMMs to ``G`` rows too. Then the
   candidates are ordered by ``(score, token id)`` as the plain path does.
3. **Proof.** The result is exact when the k-th rescored score beats every other token's
   largest possible float32 score (below). A neuron that fails is tried again with a
   margin :data:`RETRY` times wider, and one that fails that too is redone in float32.

The bound. Write ``v^ = bf16(v)``, ``rho = v - v^``, ``w^_t = bf16(w_t)``, ``sig_t = w_t - w^_t``
(both residuals are exact in float32). For every token ``t``::

    v.w_t - v^.w^_t = rho.w_t + v^.sig_t          |.| <= a n_t + b r_t        (Cauchy-Schwarz)
    |acc_t - v^.w^_t|  <= g_K sum_i |v^_i w^_ti|  <= g_K b (n_t + r_t)         (bf16 GEMM)
    |s32_t - v.w_t|    <= g_K sum_i |v_i w_ti|    <= g_K nu n_t                (float32 GEMM)
    |F_t - acc_t|      <= u |F_t|                                              (bf16 output)

with ``a = ||rho||``, ``b = ||v^||``, ``nu = ||v||``, ``n_t = ||w_t||``, ``r_t = ||sig_t||``,
``u = 2^-8`` (bf16 unit roundoff), ``g_K = K 2^-24 / (1 - K 2^-24)`` for ``K = d_model`` terms
(any summation order, with or without FMA: products of bf16 values are exact in float32).
Underflow (subnormals, or kernels that flush them to zero) adds at most ``tiny``, a few
``2^-126`` per term, bounded by ``2^-96 K (1 + nu)(1 + max n)``. So::

    s32_t <= F_t + u |F_t| + (a + g) n_t + (b + g) r_t + tiny =: U_t,   g = g_K (b + nu)

and ``s32_t >= L_t`` likewise. ``U_t`` grows with ``F_t``, so a token is bounded by its own
``F_t`` where it was read (the gathered blocks and the tail: ``n_t, r_t`` taken as its
block's maxima, which the sort by norm keeps close to its own), and by its block's extreme
elsewhere. The top side is proved when ``s32_(k) > max over non-candidates of U``, the
bottom side when ``s32_(k) < min of L``. A neuron that fails is tried again from the same
fast scores with a margin :data:`RETRY` times wider; if that fails too, the same test runs
token by token over its whole row of scores; only a neuron that fails all three is redone
in float32 (without room for the wider margin, the token-by-token test comes second).
Bounds are computed in float32 and widened by ``2^-18 (|x| + bound)`` to cover their own
rounding. No other token can then reach the k-th score, not even tie it, so the k kept
tokens and their order (score, then token id) are exactly the plain float32 path's.

Assumed of the libraries (and tested): the bf16 GEMM accumulates in float32 and rounds its
output once; float32 GEMMs of at least ``G`` rows give each element the same bits
(:func:`probe_group` refuses the two-pass path on a machine, or thread count, where no ``G``
of :data:`GROUPS` does).
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .topk import canonical_order

log = logging.getLogger(__name__)

U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
U_F32 = 2.0**-24
WIDEN = 2.0**-18  # covers the float32 rounding of the bound's own arithmetic
GROUP = 4  # rows per rescoring GEMM unless probe_group says otherwise
GROUPS = (4, 8, 16, 32)  # rows per rescoring GEMM tried by probe_group, fewest first
PLAIN_ROWS = max(GROUPS)  # the plain path pads smaller float32 GEMMs to this many rows
MARGIN = 30  # m: candidates rescored beyond k on each side (benchmarks/RESULTS.md)
RETRY = 4  # the rows no bound proves are tried again with a margin this many times wider
GATHER_EXTRA = 0  # blocks read token by token beyond k + m (more cost more than they prove here)
BLOCK = 32  # tokens per block of the fast scores (block extremes feed selection and bounds)
SCORE_BYTES = 144 << 20  # one [rows, vocab] bf16 block of fast scores (CPU; 64 MB: 1.2x slower)
SCORE_BYTES_GPU = 2 << 30  # the same on a GPU, where larger GEMMs run nearer the peak


def gamma(n: int) -> float:
    """Return ``n u / (1 - n u)`` for float32: the relative error bound of an n-term sum."""
    return n * U_F32 / (1 - n * U_F32)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Return float64 ``x`` as float32 rounded up (never below ``x``)."""
    y = x.float()
    return torch.where(y.double() < x, torch.nextafter(y, torch.full_like(y, math.inf)), y)


@dataclass
class TwoPassStats:
    """How many neurons one call proved exact at each stage, and how many it redid in float32:
    ``block_bound`` at margin m, ``retry`` by the block bound at the margin :data:`RETRY` times
    wider, ``token_bound`` only by the token-by-token bound, ``fallback`` in float32."""

    neurons: int = 0
    block_bound: int = 0
    token_bound: int = 0
    retry: int = 0
    fallback: int = 0

    def add(self, other: TwoPassStats) -> None:
        """Add ``other``'s counts to these."""
        self.neurons += other.neurons
        self.block_bound += other.block_bound
        self.token_bound += other.token_bound
        self.retry += other.retry
        self.fallback += other.fallback


def compiled_selection() -> bool:
    """True when numba imports, so that :mod:`select_cpu` can select the candidates on CPU."""
    try:
        from . import select_cpu  # noqa: F401
    except ImportError as e:
        log.info("two-pass selects with torch ops: numba is not usable (%s)", e)
        return False
    return True


class FastHead:
    """The folded head laid out for the two-pass selection, built once per atlas run.

    Tokens are sorted by row norm (largest first) and cut into ``whole`` blocks of ``block``
    tokens of similar norm (the last ``vocab % block`` form the tail). The bf16 rows ``wb``
    are stored so that member ``j`` of block ``b`` is column ``j * whole + b`` of the fast
    scores: a block's extreme is then a maximum over ``block`` contiguous slices, which runs
    at memory speed even in bf16. ``token [vocab]``: the token id of each column.
    ``token_norms [3, vocab]`` per column and ``block_norms [3, whole]`` per block (maxima):
    the row norm ``n``, the bf16 residual norm ``r`` (float32, rounded up) and a row of ones,
    which a bound multiplies by each neuron's ``(a + g, b + g, tiny)``. Float32 rows for
    rescoring come from the :class:`FoldedHead`, folded the same way.
    """

    def __init__(self, head, block: int = BLOCK):
        self.head, self.block = head, block
        self.vocab, self.d_model = head.vocab, head.d_model
        wbs, norms, res = [], [], []
        for _, w in head.chunks():
            wb = w.to(torch.bfloat16)
            wd = w.double()
            norms.append(wd.norm(dim=1))
            res.append((wd - wb.double()).norm(dim=1))
            wbs.append(wb)
            del w, wd
        norm = torch.cat(norms)
        perm = torch.sort(norm, descending=True, stable=True).indices
        self.whole = whole = self.vocab // block
        body = whole * block
        pos = torch.arange(body, device=norm.device)
        column = torch.arange(self.vocab, device=norm.device)
        column[:body] = (pos % block) * whole + pos // block
        self.token = torch.empty_like(perm)
        self.token[column] = perm
        self.wb = torch.cat(wbs)[self.token].contiguous()
        del wbs
        widen = 1 + 2.0**-40  # the float64 norms' own rounding
        n, r = _up(norm[self.token] * widen), _up(torch.cat(res)[self.token] * widen)
        self.token_norms = torch.stack([n, r, torch.ones_like(n)])
        self.block_norms = self.token_norms[:, :body].reshape(3, block, whole).amax(1)
        self.n_max = float(n.max()) if self.vocab else 0.0
        self.f32 = head.whole_rows()  # None for a head folded chunk by chunk
        self.group = GROUP  # rows per rescoring GEMM: set from probe_group by choose_precision
        # the compiled selection (select_cpu) on CPU where numba is installed, else torch ops
        self.compiled = head.device.type == "cpu" and compiled_selection()

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a reused ``shape`` tensor for ``name`` (:meth:`FoldedHead.scratch`, under
        a name of its own so the plain path's buffer is never one of these)."""
        return self.head.scratch(f"two-pass {name}", shape, dtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Return float32 folded rows ``[*ids.shape, d_model]`` of token ``ids``."""
        flat, shape = ids.reshape(-1), (*ids.shape, self.d_model)
        if self.f32 is None:
            return self.head.fold_rows(flat).view(shape)
        out = self.buffer("rows", (flat.numel(), self.d_model), torch.float32)
        return torch.index_select(self.f32, 0, flat, out=out).view(shape)


def exact_scores(
    vectors: torch.Tensor, rows: torch.Tensor, group: int = GROUP, out=None
) -> torch.Tensor:
    """Return ``[n, q]`` float32 scores of each of ``n`` vectors against its own ``q`` rows.

    ``vectors [n, d]``, ``rows [n, q, d]``, ``n`` a multiple of ``group``. Computed by GEMMs
    of ``group`` vectors against their group's rows (diagonal blocks kept), so that each
    score comes from the same float32 GEMM kernel as ``vectors @ W.T`` and has the same bits
    (:func:`probe_group` verifies this). ``out``: an optional ``[n / group, group, group q]``
    buffer for the products.
    """
    n, q, d = rows.shape
    g = n // group
    products = torch.bmm(
        vectors.view(g, group, d), rows.view(g, group * q, d).transpose(1, 2), out=out
    )
    diag = torch.diagonal(products.view(g, group, group, q), dim1=1, dim2=2)  # [g, q, group]
    return diag.permute(0, 2, 1).reshape(n, q)


def full_scores(
    vectors: torch.Tensor, w: torch.Tensor, rows: int = PLAIN_ROWS, out=None
) -> torch.Tensor:
    """Return ``vectors @ w.T`` with at least ``rows`` rows in the GEMM (zero rows padded), so
    that the kernel, and so each element's bits, are those of the plain path's large GEMMs.
    ``out``: an optional ``[n, len(w)]`` buffer for the scores (used when ``n >= rows``)."""
    n = vectors.shape[0]
    if n >= rows:
        return torch.matmul(vectors, w.T, out=out) if out is not None else vectors @ w.T
    padded = torch.cat([vectors, vectors.new_zeros(rows - n, vectors.shape[1])])
    return (padded @ w.T)[:n]


def _plain(vectors: torch.Tensor, fast: FastHead) -> torch.Tensor:
    return torch.cat([full_scores(vectors, w) for _, w in fast.head.chunks()], dim=1)


def plain_is_stable(vectors: torch.Tensor, fast: FastHead, plain=None) -> bool:
    """True when the plain path's float32 GEMMs give each element the same bits whatever
    their row count (a few, padded to :data:`PLAIN_ROWS`, or many), with the threads now set.
    ``vectors [n, d_model]``, ``n > PLAIN_ROWS + 8``; the first and last rows are checked.
    ``plain``: their scores against the whole head, if already computed."""
    n = vectors.shape[0]
    plain = _plain(vectors, fast) if plain is None else plain
    for rows in (1, PLAIN_ROWS - 1, PLAIN_ROWS + 1, PLAIN_ROWS + 8):
        for start in (0, n - rows):
            if not torch.equal(_plain(vectors[start : start + rows], fast), plain[start:][:rows]):
                return False
    return True


def check_exact(vectors: torch.Tensor, fast: FastHead, group: int, q: int = 64, plain=None) -> bool:
    """True when :func:`exact_scores` in groups of ``group`` gives the plain float32 GEMM's
    bits on this machine, with the threads now set: ``vectors [n, d_model]`` are scored
    against the whole head as the plain path does (``plain``, if already computed), and
    against random rows (``q`` and :data:`MIN_ROWS` each) as the two-pass path does."""
    plain = _plain(vectors, fast) if plain is None else plain
    gen = torch.Generator().manual_seed(0)
    usable = vectors.shape[0] // group * group
    for width in (q, MIN_ROWS):
        ids = torch.randint(0, fast.vocab, (usable, width), generator=gen).to(vectors.device)
        mine = exact_scores(vectors[:usable], fast.rows(ids), group)
        if not torch.equal(mine, plain[:usable].gather(1, ids)):
            return False
    return True


def probe_group(fast: FastHead, vectors: torch.Tensor | None = None) -> int | None:
    """Return the fewest rows per rescoring GEMM (from :data:`GROUPS`) for which this
    machine's float32 kernels give every element the plain path's bits, or None when the
    plain path's own bits depend on the row count or no group size matches them."""
    if vectors is None:
        gen = torch.Generator().manual_seed(1)
        vectors = torch.randn(2 * PLAIN_ROWS + 3, fast.d_model, generator=gen)
        vectors = vectors.to(fast.head.device)
    plain = _plain(vectors, fast)
    if not plain_is_stable(vectors, fast, plain):
        return None
    return next((g for g in GROUPS if check_exact(vectors, fast, g, plain=plain)), None)


MIN_ROWS = 16  # rows per vector in a rescoring GEMM: narrower ones may get other bits


RESCORE_ROWS = 64  # vectors per rescoring step: their candidates' rows stay in cache


def _rescore(v: torch.Tensor, ids: torch.Tensor, fast: FastHead) -> torch.Tensor:
    """Return :func:`exact_scores` of ``v [n, d]`` against rows ``ids [n, q]``, padded to
    whole groups and to at least ``MIN_ROWS`` rows each (so the GEMM has the plain path's
    shape class); the padding is dropped. Done :data:`RESCORE_ROWS` vectors at a time, so
    that the gathered rows are still in cache when the GEMM reads them (all at once, they
    were 150 MB for a block of 680 vectors and the rescoring ran 1.25x slower)."""
    n, q = ids.shape
    group = fast.group
    pad = (-n) % group
    if pad:  # the padding rows score zero vectors (ids repeated as often as needed)
        v = torch.cat([v, v.new_zeros(pad, v.shape[1])])
        ids = torch.cat([ids, ids[torch.arange(pad, device=ids.device) % n]])
    if q < MIN_ROWS:
        ids = torch.cat([ids, ids[:, :1].expand(-1, MIN_ROWS - q)], 1)
    width = ids.shape[1]
    step = max(group, RESCORE_ROWS // group * group)
    out = torch.empty(len(ids), width, dtype=torch.float32, device=v.device)
    products = fast.buffer("products", (step // group, group, group * width), torch.float32)
    for a in range(0, len(ids), step):
        b = min(len(ids), a + step)
        out[a:b] = exact_scores(v[a:b], fast.rows(ids[a:b]), group, products[: (b - a) // group])
    return out[:n, :q]


def _bound_coefficients(v: torch.Tensor, vb: torch.Tensor, d_model: int, n_max: float):
    """Return ``[n, 3]`` float32, rounded up: each neuron's ``(a + g, b + g, tiny)``."""
    vd, vbd = v.double(), vb.double()
    b = vbd.norm(dim=1)
    nu = vd.norm(dim=1)
    g = gamma(d_model) * (b + nu)
    tiny = 2.0**-96 * d_model * (1 + nu) * (1 + n_max)
    coef = torch.stack([(vd - vbd).norm(dim=1) + g, b + g, tiny], dim=1)
    return _up(coef * (1 + 2.0**-40))  # the float64 norms' own rounding


SLOPE = U_BF16 + 2 * WIDEN  # of |F| in a bound, its own rounding included
SCALE = 1 + WIDEN


def _upper(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Return ``x + SLOPE |x| + SCALE r``: the largest float32 score a token with fast score
    (or fast bound) ``x`` can have, ``r = coef @ norms`` its norm terms (broadcast to ``x``)."""
    return (x + SCALE * r).add_(x.abs(), alpha=SLOPE)


def _lower(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Return ``x - SLOPE |x| - SCALE r``, the mirror of :func:`_upper`."""
    return (x - SCALE * r).sub_(x.abs(), alpha=SLOPE)


def _side(scores, extreme, coef, rb, fast: FastHead, keep: int, gather: int, largest: bool):
    """Pick one side's candidates and bound every other token of that side.

    ``extreme [n, whole]``: each block's largest (smallest) fast score; ``coef [n, 3]``: the
    neurons' bound coefficients; ``rb [n, whole]``: the blocks' norm terms. Returns ``(columns [n, keep], limit [n])``: the ``keep`` best fast
    scores among the ``gather`` blocks with the best extremes and the tail, and the float32
    score no other token can pass (reach, for the bottom side): bounded token by token inside
    those blocks and the tail, block by block outside them.
    """
    n, block, whole = scores.shape[0], fast.block, fast.whole
    body = whole * block
    reach, pick, hide = (
        (_upper, torch.amax, -math.inf) if largest else (_lower, torch.amin, math.inf)
    )
    blocks = extreme.topk(gather, dim=-1, largest=largest, sorted=False).indices  # [n, gather]
    grid = scores[:, :body].view(torch.int16).view(n, block, whole)  # int16 gathers run faster
    near = grid.gather(2, blocks[:, None, :].expand(n, block, gather))
    near = near.view(torch.bfloat16).float()
    tail = scores[:, body:].float()
    values = torch.cat([near.reshape(n, -1), tail], 1)
    limits = torch.cat(
        [
            reach(near, rb.gather(1, blocks)[:, None, :]).reshape(n, -1),
            reach(tail, coef @ fast.token_norms[:, body:]),
        ],
        1,
    )
    pos = values.topk(keep, dim=-1, largest=largest, sorted=False).indices
    inside = pos < block * gather
    j, i = pos // gather, (pos % gather).where(inside, 0)
    columns = torch.where(inside, j * whole + blocks.gather(1, i), body + pos - block * gather)
    far = reach(extreme, rb).scatter_(1, blocks, hide)
    limit = torch.maximum if largest else torch.minimum
    return columns, limit(pick(limits.scatter_(1, pos, hide), 1), pick(far, 1))


def _block_extremes(scores: torch.Tensor, fast: FastHead) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 ``(upper, lower) [n, whole]``: each block's largest fast score (or 0 when
    all are negative) and its smallest (or 0 when none is negative), bounds as good as the
    extremes wherever a block has scores of both signs, and valid everywhere.

    A bf16 number's bits read as int16 order the non-negative numbers as their values do and
    put every negative number below them, so the int16 maximum of a block is its largest
    score whenever one is >= 0; the same on the negated scores gives the smallest. Integer
    maxima run about 6x faster than bf16 ones on CPU (the bf16 ``amax`` converts each value),
    which pays for negating the scores once.
    """
    n, block, whole = scores.shape[0], fast.block, fast.whole
    body = scores[:, : whole * block]
    negated = fast.buffer("negated", (n, whole * block), torch.bfloat16)
    torch.neg(body, out=negated)
    top, bottom = (
        x.view(torch.int16).view(n, block, whole).amax(1).view(torch.bfloat16).float().clamp_(min=0)
        for x in (body, negated)
    )
    return top, bottom.neg_()


def _prove(v, scores, coef, fast: FastHead, k: int, margin: int, per_token: bool = True):
    """Select, rescore and prove ``v [n, d_model]`` from its fast ``scores`` and bound
    ``coef``. Returns ``(result, ok [n] bool, token_bound)``: rows not ``ok`` are not proved;
    ``token_bound`` counts the rows proved only by the per-token bound."""
    keep = k + margin
    gather = min(fast.whole, keep + GATHER_EXTRA)
    if fast.compiled:
        from . import select_cpu

        top_col, top_lim, bot_col, bot_lim = select_cpu.select(
            scores, fast, coef, keep, gather, SLOPE, SCALE
        )
    else:
        bmax, bmin = _block_extremes(scores, fast)
        rb = coef @ fast.block_norms  # [n, whole]
        top_col, top_lim = _side(scores, bmax, coef, rb, fast, keep, gather, largest=True)
        bot_col, bot_lim = _side(scores, bmin, coef, rb, fast, keep, gather, largest=False)
    ids = fast.token[torch.cat([top_col, bot_col], 1)]
    exact = _rescore(v, ids, fast)
    tv, ti = canonical_order(exact[:, :keep], ids[:, :keep], k, largest=True)
    bv, bi = canonical_order(exact[:, keep:], ids[:, keep:], k, largest=False)
    ok = (tv[:, -1] > top_lim) & (bv[:, -1] < bot_lim)
    todo = (~ok).nonzero().flatten()
    token_bound = 0
    if len(todo) and per_token:  # the bound token by token on these rows' own scores
        f, r = scores[todo].float(), coef[todo] @ fast.token_norms
        hi = _upper(f, r).scatter_(1, top_col[todo], -math.inf)
        lo = _lower(f, r).scatter_(1, bot_col[todo], math.inf)
        ok[todo] = (tv[todo, -1] > hi.amax(1)) & (bv[todo, -1] < lo.amin(1))
        token_bound = int(ok[todo].sum())
    result = {"top_ids": ti, "top_values": tv, "bottom_ids": bi, "bottom_values": bv}
    return result, ok, token_bound


def two_pass_block(
    v: torch.Tensor, fast: FastHead, k: int, margin: int = MARGIN
) -> tuple[dict[str, torch.Tensor], torch.Tensor, TwoPassStats]:
    """Return ``(result, failed, stats)`` for one block of ``[n, d_model]`` float32 vectors.

    ``result`` holds ``top_ids, top_values, bottom_ids, bottom_values`` ``[n, k]``; rows listed
    in ``failed`` (int64 row numbers) are not proved exact and must be redone in float32.
    Rows the first try cannot prove are tried again on the same fast scores with a margin
    :data:`RETRY` times wider (where the vocabulary has blocks enough).
    """
    n = v.shape[0]
    vb = v.to(torch.bfloat16)
    coef = _bound_coefficients(v, vb, fast.d_model, fast.n_max)
    scores = fast.buffer("scores", (n, fast.vocab), torch.bfloat16)
    torch.matmul(vb, fast.wb.T, out=scores)  # columns as FastHead lays them out
    wide = RETRY * margin
    retry = margin < wide <= fast.whole - k
    result, ok, token_bound = _prove(v, scores, coef, fast, k, margin, per_token=not retry)
    # a NaN or infinity in a vector, or products that could overflow float32 (so NaN scores):
    # the float32 path decides those rows
    finite = coef.isfinite().all(1) & (coef[:, 1].double() * (1 + fast.n_max) < 2.0**120)
    ok &= finite
    stats = TwoPassStats(n, int(ok.sum()) - token_bound, token_bound)
    todo = (~ok & finite).nonzero().flatten()
    if len(todo) and retry:
        again, ok2, token_bound = _prove(v[todo], scores[todo], coef[todo], fast, k, wide)
        for key in result:
            result[key][todo] = again[key]
        ok[todo] = ok2
        stats.retry = int(ok2.sum()) - token_bound
        stats.token_bound = token_bound
    failed = (~ok).nonzero().flatten()
    stats.fallback = len(failed)
    return result, failed, stats


PRECISIONS = ("auto", "float32", "two-pass")


_flags_lock = threading.Lock()
_flags_users = 0
_flags_saved: tuple[bool, bool] = (False, False)


@contextmanager
def exact_gemms():
    """While any thread is inside: CUDA GEMMs reduce in float32 as the bound assumes (no
    reduced-precision bf16 reductions, no TF32). The process-wide flags are set by the first
    thread in and restored by the last one out, in whatever order they leave."""
    global _flags_users, _flags_saved
    cuda = torch.backends.cuda.matmul
    with _flags_lock:
        if _flags_users == 0:
            _flags_saved = (cuda.allow_bf16_reduced_precision_reduction, cuda.allow_tf32)
            cuda.allow_bf16_reduced_precision_reduction = False
            cuda.allow_tf32 = False
        _flags_users += 1
    try:
        yield
    finally:
        with _flags_lock:
            _flags_users -= 1
            if _flags_users == 0:
                cuda.allow_bf16_reduced_precision_reduction, cuda.allow_tf32 = _flags_saved


def choose_precision(precision: str, head, k: int, margin: int = MARGIN) -> FastHead | None:
    """Return the :class:`FastHead` to map with, or None for the plain float32 path.

    ``auto`` picks the two-pass path wherever it applies: a float32 atlas on CPU, a
    vocabulary of at least ``2 (k + margin + GATHER_EXTRA)`` tokens, and float32 GEMMs that
    keep their bits across the shapes used (:func:`probe_group`, run with the torch threads
    now set; the plain path pads its GEMMs to :data:`PLAIN_ROWS` rows, the most tried).
    ``two-pass`` insists on it and says why it cannot; ``float32`` never uses it.
    """
    from conceptvec.errors import AtlasError

    if precision not in PRECISIONS:
        raise AtlasError(f"unknown precision {precision!r}; use auto, float32 or two-pass")
    if precision == "float32":
        return None
    why = None
    block = min(BLOCK, head.vocab // (k + margin + GATHER_EXTRA))
    if head.device.type != "cpu" and precision == "auto":
        why = f"auto uses it on CPU only (the device is {head.device.type}); ask for two-pass"
    elif head.device.type not in ("cpu", "cuda"):
        why = f"it runs on CPU and CUDA only (the device is {head.device.type})"
    elif head.dtype != torch.float32:
        why = f"it makes float32 atlases (the dtype is {head.dtype}); use --dtype float32"
    elif block < 2:
        why = f"the vocabulary ({head.vocab}) is too small for k = {k}; use --precision float32"
    fast = None
    if why is None:
        fast = FastHead(head, block)
        if not fast.token_norms.isfinite().all():
            why = "the unembedding has NaN or infinite values; use --precision float32"
            fast = None
    if fast is not None:
        with exact_gemms():
            group = probe_group(fast)
        if group is None:
            threads = torch.get_num_threads()
            why = (
                f"this BLAS gives other float32 bits for other GEMM shapes with {threads} torch "
                f"thread(s), even with {max(GROUPS)} rows per GEMM"
                + ("; try OMP_NUM_THREADS=1" if threads > 1 else "")
            )
            fast = None
        else:
            fast.group = group
            log.info("two-pass: float32 GEMMs of %d rows or more keep their bits here", group)
    if why is not None and precision == "two-pass":
        raise AtlasError(f"--precision two-pass cannot be used: {why}")
    if why is not None:
        log.info("mapping in plain float32: two-pass does not apply (%s)", why)
    return fast


def project_two_pass(
    vectors: torch.Tensor, fast: FastHead, k: int, plain, margin: int = MARGIN
) -> tuple[dict[str, torch.Tensor], TwoPassStats]:
    """Return ``(top/bottom k ids and scores, stats)`` for ``[n, d_model]`` float32 vectors.

    Identical to ``plain(vectors, head, k)`` (the float32 path, which redoes here the rows the
    bounds cannot prove even with a margin :data:`RETRY` times wider), in blocks of rows
    whose bf16 scores fit ``SCORE_BYTES``.
    """
    vectors = vectors.contiguous()  # a GEMM's bits may depend on its operands' layout
    n = vectors.shape[0]
    budget = SCORE_BYTES_GPU if vectors.device.type == "cuda" else SCORE_BYTES
    rows = max(GROUP, budget // (2 * fast.vocab) // GROUP * GROUP)
    rows = -(-n // -(-n // rows) // GROUP) * GROUP  # blocks of even size: no small last one
    parts, failed = [], []
    stats = TwoPassStats()
    with exact_gemms():
        for start in range(0, n, rows):
            result, bad, done = two_pass_block(vectors[start : start + rows], fast, k, margin)
            parts.append(result)
            failed.append(bad + start)
            stats.add(done)
        out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        redo = torch.cat(failed)
        if len(redo):
            again = plain(vectors[redo], fast.head, k)
            for key in out:
                out[key][redo] = again[key].to(out[key].dtype)
    return out, stats
