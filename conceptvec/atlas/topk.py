"""Top-k and bottom-k of score rows without sorting them: one pass of block extrema first.

For scores ``[n, vocab]`` the exact top-k lies inside the k blocks (of ``block`` columns) with
the largest maxima: a block holding one of the top-k values has a maximum at least as large
as the k-th value, and at most k blocks can. So a pass of block maxima (and one of minima)
plus small top-k calls over ``k * block`` candidates replaces two full ``topk`` passes.
"""

from __future__ import annotations

import torch

# Block widths measured best by benchmarks/bench_topk.py (see benchmarks/RESULTS.md): on an
# H200 wider blocks cut the selection from 19 ms (64) to 8 ms (256) per Llama-3.1-8B layer;
# on CPU 64-256 are within noise of each other.
BLOCK = {"cuda": 256, "cpu": 128}


def top_bottom(
    scores: torch.Tensor, k: int, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(top_values, top_ids, bottom_values, bottom_ids)``, each ``[n, k]``, best first.

    Values keep the dtype of ``scores``; ids are int64 column indices. Ties may pick a
    different (equally scored) index than :func:`torch.topk`, never a different value.
    """
    block = block or BLOCK.get(scores.device.type, 128)
    n, vocab = scores.shape
    k = min(k, vocab)
    whole = vocab // block
    if whole < k or block <= 1:
        top = scores.topk(k, dim=-1)
        bottom = scores.topk(k, dim=-1, largest=False)
        return top.values, top.indices, bottom.values, bottom.indices
    body = scores[:, : whole * block].reshape(n, whole, block)
    # amax and amin as two passes: torch's fused aminmax is slower than both together
    # (benchmarks/bench_topk.py)
    top_v, top_i = _pick(body, body.amax(-1), k, largest=True)
    bot_v, bot_i = _pick(body, body.amin(-1), k, largest=False)
    if whole * block < vocab:  # the tail that does not fill a block joins the candidates
        tail = scores[:, whole * block :]
        offset = whole * block
        top_v, top_i = _merge(top_v, top_i, tail, offset, k, largest=True)
        bot_v, bot_i = _merge(bot_v, bot_i, tail, offset, k, largest=False)
    return top_v, top_i, bot_v, bot_i


def _pick(body: torch.Tensor, extreme: torch.Tensor, k: int, largest: bool):
    n, _, block = body.shape
    blocks = extreme.topk(k, dim=-1, largest=largest).indices  # [n, k]
    cand = body.gather(1, blocks[..., None].expand(-1, -1, block)).reshape(n, k * block)
    values, pos = cand.topk(k, dim=-1, largest=largest)
    ids = blocks.gather(1, pos // block) * block + pos % block
    return values, ids


def _merge(values, ids, tail, offset: int, k: int, largest: bool):
    tail_ids = torch.arange(offset, offset + tail.shape[1], device=tail.device)
    all_v = torch.cat([values, tail], dim=1)
    all_i = torch.cat([ids, tail_ids.expand(tail.shape[0], -1)], dim=1)
    v, pos = all_v.topk(k, dim=-1, largest=largest)
    return v, all_i.gather(1, pos)


def merge_candidates(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-vocabulary-chunk results (ids already global) into one top/bottom-k."""
    if len(parts) == 1:
        return parts[0]
    tv, ti, bv, bi = (torch.cat([p[j] for p in parts], dim=1) for j in range(4))
    top_v, pos = tv.topk(k, dim=-1)
    bot_v, bpos = bv.topk(k, dim=-1, largest=False)
    return top_v, ti.gather(1, pos), bot_v, bi.gather(1, bpos)


def canonical_order(
    values: torch.Tensor, ids: torch.Tensor, k: int, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the first ``k`` of each row's candidates ``[n, q]`` ordered by value, then id.

    Largest values first (smallest with ``largest=False``); equal values keep the lower token
    id first. The atlas orders its rows this way, so that ties never depend on how the
    scores were computed or selected.
    """
    by_id = ids.sort(dim=-1)
    values = values.gather(-1, by_id.indices)
    order = values.sort(dim=-1, descending=largest, stable=True).indices[..., :k]
    return values.gather(-1, order), by_id.values.gather(-1, order)
