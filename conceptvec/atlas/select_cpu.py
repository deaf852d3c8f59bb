"""The two-pass selection on CPU as one compiled pass per row (numba), instead of ~20 torch ops.

:func:`conceptvec.atlas.twopass._side` states what is computed; this module computes the same
thing for both sides at once, one row of fast scores at a time while the row sits in cache:

1. each block's largest and smallest bf16 score, compared as int16 *keys* (a bf16 number's
   bits with the 15 magnitude bits flipped when it is negative order as the numbers do);
2. per side, the cut: the ``gather``-th best block extreme (by two 256-bin histograms);
   every block at or above it is read (ties: all of them);
3. in those blocks, and the tail, the tokens at or above the cut are collected (at least
   ``gather >= keep`` of them: each read block's extreme is one) and the ``keep`` best
   become candidates; every other token read is bounded by its own fast score (per block,
   by the best of those below the cut, which gives the same bound);
4. every block below the cut is bounded by its extreme.

The bounds are the torch path's (:func:`~conceptvec.atlas.twopass._upper`), evaluated in
float32 (the ``WIDEN`` term in ``SLOPE`` and ``SCALE`` covers their rounding). The calling
thread and helper threads share the rows in chunks; the compiled function releases the
GIL. It is compiled assuming no NaN: rows that could hold one (a vector or head with a NaN
or infinity, or scores that could overflow) never reach it as proved
(:func:`conceptvec.atlas.twopass.two_pass_block` sends them to float32).

This module needs numba (imported only by a two-pass run on CPU; without numba the torch
ops do the work). Compiled code is cached on disk where the package is writable.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch

_jit = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"nnan"})


@_jit
def _key(h):
    """Return the int16 key of bf16 bits ``h`` (an involution: it also maps a key to bits)."""
    return np.int16(h ^ (np.int16(h >> np.int16(15)) & np.int16(0x7FFF)))


@_jit
def _value(k, scratch):
    """Return the float32 value of key ``k`` (``scratch``: one int32, viewed as float32)."""
    scratch[0] = np.int32(_key(k)) << 16
    return scratch.view(np.float32)[0]


@_jit
def _kth_key(keys, m, kth, counts):
    """Return the ``kth`` largest of the int16 ``keys[:m]`` (1 = the largest), by two 256-bin
    histograms (of the high byte, then of the low byte within the cut's high byte): many
    equal keys, common among block extremes, do not slow it down as they do a quickselect.
    ``counts``: an int64 scratch array of 256."""
    counts[:] = 0
    for p in range(m):
        counts[(np.int32(keys[p]) + 32768) >> 8] += 1
    above = 0
    top = 255
    while above + counts[top] < kth:
        above += counts[top]
        top -= 1
    counts[:] = 0
    for p in range(m):
        u = np.int32(keys[p]) + 32768
        if (u >> 8) == top:
            counts[u & 255] += 1
    low = 255
    while above + counts[low] < kth:
        above += counts[low]
        low -= 1
    return np.int16(((top << 8) | low) - 32768)


@_jit
def _kernel(
    scores, whole, block, rnorm, tnorm, coef, keep, gather, slope, scale, out_cols, out_lim
):
    """Select candidates and limits for rows ``0..len(scores)`` (see the module's doc).

    ``scores [n, vocab]`` int16 (bf16 bits, columns laid out as :class:`FastHead` does);
    ``rnorm [3, whole]`` block norm maxima; ``tnorm [3, vocab]`` token norms (for the tail);
    ``coef [n, 3]``; ``out_cols [n, 2, keep]`` int64 and ``out_lim [n, 2]`` float32 receive
    each side's candidate columns and limit (top first, then bottom). The bottom side runs
    as a top side on the negated scores, whose keys are the keys' complements.
    """
    n, vocab = scores.shape
    body = whole * block
    hi = np.empty(whole, np.int16)
    lo = np.empty(whole, np.int16)
    keys = np.empty(whole, np.int16)
    rb = np.empty(whole, np.float32)
    got_key = np.empty(vocab, np.int16)  # tokens read with a key >= the cut: key, column, r
    got_col = np.empty(vocab, np.int64)
    got_r = np.empty(vocab, np.float32)
    ext_bits = np.empty(whole, np.int32)  # this side's extremes as float32 bits
    ext = ext_bits.view(np.float32)
    one = np.empty(1, np.int32)  # scratch for _value
    counts = np.empty(256, np.int64)
    for i in range(n):
        row = scores[i]
        c0, c1, c2 = coef[i, 0], coef[i, 1], coef[i, 2]
        for b in range(whole):
            rb[b] = scale * (c0 * rnorm[0, b] + c1 * rnorm[1, b] + c2 * rnorm[2, b])
            hi[b] = np.int16(-32768)
            lo[b] = np.int16(32767)
        for j in range(block):  # int16 arithmetic throughout, so that it vectorizes
            seg = row[j * whole : (j + 1) * whole]
            for b in range(whole):
                k = _key(seg[b])
                hi[b] = max(hi[b], k)
                lo[b] = min(lo[b], k)
        for side in range(2):
            flip = np.int16(0 if side == 0 else -1)  # key ^ -1 = the negated score's key
            for b in range(whole):
                k = hi[b] if side == 0 else np.int16(~lo[b])
                keys[b] = k
                ext_bits[b] = np.int32(_key(k)) << 16
            # read every token when fewer blocks than candidates are gathered (a small vocabulary)
            cut = _kth_key(keys, whole, gather, counts) if gather >= keep else np.int16(-32768)
            # blocks below the cut are bounded by their extremes; those at or above it (at
            # least gather of them, so at least keep tokens at or above the cut) are read
            far = -np.inf
            for b in range(whole):
                x = ext[b]
                u = x + rb[b] + slope * abs(x)
                far = max(far, u if keys[b] < cut else -np.inf)
            near = -np.inf
            m = 0
            for b in range(whole):
                if keys[b] < cut:
                    continue
                below = np.int16(-32768)
                for j in range(block):
                    col = j * whole + b
                    k = np.int16(_key(row[col]) ^ flip)
                    if k >= cut:
                        got_key[m] = k
                        got_col[m] = col
                        got_r[m] = rb[b]
                        m += 1
                    else:
                        below = max(below, k)
                if below > -32768:
                    x = _value(below, one)
                    near = max(near, x + rb[b] + slope * abs(x))
            for col in range(body, vocab):  # the tail, with its own norms
                got_key[m] = np.int16(_key(row[col]) ^ flip)
                got_col[m] = col
                got_r[m] = scale * (c0 * tnorm[0, col] + c1 * tnorm[1, col] + c2 * tnorm[2, col])
                m += 1
            # the keep best of those read become candidates; the others are bounded one by one
            kcut = _kth_key(got_key, m, keep, counts)
            t = 0
            for p in range(m):
                if got_key[p] > kcut:
                    out_cols[i, side, t] = got_col[p]
                    t += 1
            for p in range(m):
                k = got_key[p]
                if k == kcut and t < keep:
                    out_cols[i, side, t] = got_col[p]
                    t += 1
                elif k <= kcut:
                    x = _value(k, one)
                    near = max(near, x + got_r[p] + slope * abs(x))
            limit = max(near, far)
            out_lim[i, side] = limit if side == 0 else -limit


CHUNK = 64  # rows per kernel call: threads take chunks as they go, so a slow one does fewer


def select(scores: torch.Tensor, fast, coef: torch.Tensor, keep: int, gather: int, slope, scale):
    """Return ``(top_cols, top_lim, bot_cols, bot_lim)`` for ``scores [n, vocab]`` bf16 (CPU),
    as :func:`conceptvec.atlas.twopass._side` does for each side.

    The calling thread and ``torch.get_num_threads() - 1`` helpers take chunks of
    :data:`CHUNK` rows until none is left. Taking them as they go, not half each, matters
    right after a GEMM: torch's OpenMP threads spin for a few ms before they sleep, and the
    helper that shares a core with one of them gets less done meanwhile.
    """
    n = scores.shape[0]
    rows = scores.view(torch.int16).numpy()
    c = coef.contiguous().numpy()
    cols = np.empty((n, 2, keep), np.int64)
    lim = np.empty((n, 2), np.float32)
    fixed = (fast.whole, fast.block, fast.block_norms.numpy(), fast.token_norms.numpy())
    rest = (keep, gather, np.float32(slope), np.float32(scale))
    starts = iter(range(0, n, CHUNK))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not errors:
                with lock:
                    a = next(starts, None)
                if a is None:
                    return
                b = min(n, a + CHUNK)
                _kernel(rows[a:b], *fixed, c[a:b], *rest, cols[a:b], lim[a:b])
        except BaseException as e:  # re-raised in the calling thread
            errors.append(e)

    # helpers are joined before returning (daemon only so that nothing waits for them)
    extra = min(torch.get_num_threads(), -(-n // CHUNK)) - 1
    helpers = [threading.Thread(target=work, daemon=True) for _ in range(max(0, extra))]
    for h in helpers:
        h.start()
    work()
    for h in helpers:
        h.join()
    if errors:
        raise errors[0]
    out, limits = torch.from_numpy(cols), torch.from_numpy(lim)
    return out[:, 0], limits[:, 0], out[:, 1], limits[:, 1]
