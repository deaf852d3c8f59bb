"""Running per-neuron statistics of one layer's MLP activations over a corpus, vectorised.

For every neuron of a layer at once (never a Python loop over neurons), :class:`LayerStats`
keeps, from the batches it is shown:

- the ``k`` highest and ``k`` lowest activations with where they were (text, position) and
  the context the model saw there: ``window`` token ids either side of the firing token and
  the neuron's activation on each of them;
- the count of tokens above ``+threshold`` and below ``-threshold`` (activation density);
- the sum and sum of squares (mean and standard deviation, accumulated in float64);
- a uniform sample of ``sample`` token positions (reservoir sampling, the same positions for
  every neuron and layer), from which the quantiles are estimated at the end.

Selection without sorting every activation: a batch's ``[tokens, d_mlp]`` activations are cut
into blocks of ``block`` tokens and one ``amax`` (``amin``) gives every block's extreme. A
neuron whose best block does not beat its current k-th value is left out at once (after a
long corpus, almost every neuron in almost every batch). For the rest, the top-k lies in the
k blocks with the best extremes: those blocks are gathered whole (``torch.gather``), narrowed
to their k best sub-blocks of ``SUB`` tokens, and one ``topk`` per neuron over the list and
the candidates decides what enters. Only the entries that enter have their context windows
gathered. Density counts, sums and the sample are one pass each over the batch. Memory is
``O(d_mlp * k * window)``, flat in corpus length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FEW = 2
"""Neurons with at most this many blocks that beat their k-th value are merged together."""
SUB = 8
"""Tokens per sub-block: the best blocks' candidates are narrowed to their k best sub-blocks."""
QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
SIDES = ("top", "bottom")


@dataclass(frozen=True)
class StatsConfig:
    """How much of each neuron's activations the activation atlas keeps."""

    k: int = 20
    """Top and bottom exemplars kept per neuron."""
    window: int = 8
    """Tokens of context kept on each side of an exemplar's firing token."""
    threshold: float = 1.0
    """Density counts tokens with activation above ``+threshold`` (and below ``-threshold``)."""
    sample: int = 1024
    """Token positions in the reservoir sample the quantiles are estimated from."""
    quantiles: tuple[float, ...] = QUANTILES
    block: int = 32
    """Tokens per block in the top-k selection (a speed setting; the result is the same)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as recorded in the activation manifest."""
        return {
            "k": self.k,
            "window": self.window,
            "threshold": self.threshold,
            "sample": self.sample,
            "quantiles": list(self.quantiles),
        }


@dataclass
class Batch:
    """One forward pass's tokens, as the statistics need them.

    ``mask`` ``[rows, cols]`` marks the text tokens (no BOS, no padding); the flat
    ``[n]`` tensors follow ``mask``'s true entries in row-major order.
    """

    ids: torch.Tensor  # [rows, cols] int64 token ids
    mask: torch.Tensor  # [rows, cols] bool
    text: torch.Tensor  # [n] int64: corpus text index of each token
    pos: torch.Tensor  # [n] int64: position of the token in its text
    row: torch.Tensor  # [n] int64
    col: torch.Tensor  # [n] int64
    lo: torch.Tensor  # [rows] int64: first text column of each row
    hi: torch.Tensor  # [rows] int64: one past the last text column
    sample_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """Flat token indices that enter the reservoir sample, in the order they enter."""
    sample_slots: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """The reservoir slot each of ``sample_rows`` goes to."""

    @property
    def full(self) -> bool:
        """True when every position is a text token (no BOS, no padding)."""
        return self.row.numel() == self.mask.numel()

    def to(self, device: torch.device) -> Batch:
        """Return the batch with its tensors on ``device``."""
        names = ("ids", "mask", "text", "pos", "row", "col", "lo", "hi")
        moved = {n: getattr(self, n).to(device) for n in names}
        return Batch(**moved, sample_rows=self.sample_rows, sample_slots=self.sample_slots)


class LayerStats:
    """The running statistics of one layer's ``d_mlp`` neurons (see the module docstring)."""

    def __init__(self, d_mlp: int, cfg: StatsConfig, device: torch.device | str = "cpu"):
        self.cfg, self.d = cfg, d_mlp
        k, w = cfg.k, 2 * cfg.window + 1
        dev = torch.device(device)
        self.t: dict[str, torch.Tensor] = {"n": torch.zeros((), dtype=torch.int64, device=dev)}
        for side in SIDES:
            fill = float("-inf") if side == "top" else float("inf")
            self.t[f"{side}_values"] = torch.full((d_mlp, k), fill, device=dev)
            self.t[f"{side}_text"] = torch.full((d_mlp, k), -1, dtype=torch.int64, device=dev)
            self.t[f"{side}_pos"] = torch.full((d_mlp, k), -1, dtype=torch.int64, device=dev)
            self.t[f"{side}_window_ids"] = torch.full(
                (d_mlp, k, w), -1, dtype=torch.int32, device=dev
            )
            self.t[f"{side}_window_values"] = torch.zeros((d_mlp, k, w), device=dev)
        for name in ("above", "below"):
            self.t[name] = torch.zeros(d_mlp, dtype=torch.int64, device=dev)
        for name in ("sum", "sumsq"):
            self.t[name] = torch.zeros(d_mlp, dtype=torch.float64, device=dev)
        self.t["sample"] = torch.zeros((cfg.sample, d_mlp), device=dev)

    # ------------------------------------------------------------------ update
    def update(self, x: torch.Tensor, batch: Batch) -> None:
        """Fold one batch's activations ``x`` ``[rows, cols, d_mlp]`` into the statistics."""
        x = x.detach()
        if x.dtype != torch.float32:
            x = x.float()
        if batch.full:  # every position is a text token: a view, no copy
            flat = x.reshape(-1, x.shape[-1])
        else:
            flat = x[batch.mask]  # [n, d]
        n = flat.shape[0]
        if n == 0:
            return
        t, thr = self.t, self.cfg.threshold
        t["n"] += n
        # the batch-sized temporaries go to one reused buffer: a fresh one per operation costs
        # its page faults again on every batch, more than the arithmetic. Counts are float
        # sums of signs (exact: a batch has far fewer than 2**24 tokens); a boolean sum over
        # the token axis is several times slower.
        buf = scratch(flat)
        t["above"] += torch.sub(flat, thr, out=buf).sign_().clamp_(min=0).sum(0).long()
        t["below"] += torch.add(flat, thr, out=buf).sign_().clamp_(max=0).sum(0).neg_().long()
        t["sum"] += flat.sum(0).double()
        t["sumsq"] += torch.square(flat, out=buf).sum(0).double()
        if len(batch.sample_rows):
            t["sample"][batch.sample_slots.to(flat.device)] = flat[
                batch.sample_rows.to(flat.device)
            ]
        for side in SIDES:
            self._merge(side, x, flat, batch)

    def _merge(self, side: str, x: torch.Tensor, flat: torch.Tensor, batch: Batch) -> None:
        """Fold the batch's entries that beat a neuron's current k-th value into its list.

        A neuron takes part only when one of its block extremes (or an entry of the tail that
        fills no whole block) beats its current k-th value: a cheap test that, once the lists
        hold a long corpus's extremes, leaves almost every neuron out. For those that take
        part, the candidates are the entries of their best blocks (the k best at most, and
        only as many ranks as beat the k-th value: neurons with at most ``FEW`` such blocks are
        done together, the others apart), in token order, then the tail. See :meth:`_select`.
        """
        t, k, b = self.t, self.cfg.k, self.cfg.block
        top = side == "top"
        n, d = flat.shape
        dev = flat.device
        state = t[f"{side}_values"]  # [d, k]
        worst = state.amin(1) if top else state.amax(1)  # [d]
        nb, tail = n // b, n % b
        need = torch.zeros(d, dtype=torch.bool, device=dev)
        if nb:
            main = flat[: nb * b].view(nb, b, d)
            ext = main.amax(1) if top else main.amin(1)  # [nb, d]
            need |= ext.amax(0) > worst if top else ext.amin(0) < worst
        if tail:
            rest = flat[nb * b :]
            need |= rest.amax(0) > worst if top else rest.amin(0) < worst
        J = need.nonzero().flatten()
        m = len(J)
        if not m:  # the cheap test: no entry of the batch enters any list
            return
        every = torch.ones(m, dtype=torch.bool, device=dev)
        groups: list[tuple[torch.Tensor, int | None]] = [(every, 0)]
        ei = torch.zeros((0, m), dtype=torch.long, device=dev)
        if nb:
            extj = ext if m == d else ext.index_select(1, J)  # [nb, m]
            if nb > k:  # each neuron's k best blocks, best first: those that beat come first
                ev, ei = extj.topk(k, dim=0, largest=top)
                good = (ev > worst[J] if top else ev < worst[J]).sum(0)  # [m] ranks that beat
                few = good <= FEW
                groups = [(few, FEW), (~few, None)]
            else:  # every block, in order
                ei = torch.arange(nb, device=dev).view(-1, 1).expand(nb, m)
                groups = [(every, nb)]
        fv = flat.reshape(-1)
        for chosen, ranks in groups:
            cols = chosen.nonzero().flatten()
            if not len(cols):
                continue
            g = int(good[cols].max()) if ranks is None else min(ranks, len(ei))
            self._select(side, x, batch, fv, J[cols], ei[:g].index_select(1, cols))

    def _select(self, side: str, x: torch.Tensor, batch: Batch, fv: torch.Tensor, J, blk) -> None:
        """Merge neurons ``J``'s candidates (blocks ``blk`` ``[g, m]`` and the tail) into their
        lists.

        Values are read by linear index from the flat ``[n * d]`` activations (``index_select``:
        no copy of whole columns). More than ``k * SUB`` block entries are first narrowed to
        the k best sub-blocks of ``SUB`` tokens. The list's ``k`` entries and the candidates
        are cut to the top ``k`` per neuron by one ``topk``; between values exactly equal at
        the k-th place, ``topk`` chooses (:meth:`finish` orders equal values by corpus
        position). The list is kept unordered: an entering value takes the slot of an evicted
        one, in order, so only entering entries are written.
        """
        t, k, b = self.t, self.cfg.k, self.cfg.block
        top = side == "top"
        state = t[f"{side}_values"]
        dev = fv.device
        d = state.shape[0]
        n = fv.numel() // d
        nb = n // b
        m, g = len(J), blk.shape[0]
        toks = []
        if g:
            blk = blk.sort(dim=0).values  # token order
            tok = (blk.unsqueeze(1) * b + torch.arange(b, device=dev).view(1, b, 1)).reshape(
                g * b, m
            )
            if g * b > k * SUB and b % SUB == 0:
                got = fv.index_select(0, (tok * d + J).view(-1)).view(-1, SUB, m)
                sx = got.amax(1) if top else got.amin(1)  # [g * b / SUB, m]
                si = sx.topk(k, dim=0, largest=top).indices.sort(dim=0).values  # [k, m]
                sidx = si.unsqueeze(1).expand(k, SUB, m)
                tok = torch.gather(tok.view(-1, SUB, m), 0, sidx).reshape(k * SUB, m)
            toks.append(tok)
        if n > nb * b:
            toks.append(torch.arange(nb * b, n, device=dev).view(-1, 1).expand(n - nb * b, m))
        tok = torch.cat(toks) if len(toks) > 1 else toks[0]  # [C, m] flat token index
        cand = fv.index_select(0, (tok * d + J).reshape(-1)).view(-1, m)
        cv = torch.cat([state[J].T, cand]).T.contiguous()  # [m, k + C]: the list first
        best = cv.topk(k, dim=1, largest=top, sorted=False).indices  # [m, k]
        kept = torch.zeros(cv.shape, dtype=torch.bool, device=dev).scatter_(1, best, True)
        ri, slot = (~kept[:, :k]).nonzero(as_tuple=True)  # evicted, neuron by neuron
        ci, cj = kept[:, k:].nonzero(as_tuple=True)  # entering, the same neurons in order
        self._write(side, x, batch, J[ri], slot, tok[cj, ci], cv[ci, k + cj])

    def _write(self, side, x, batch: Batch, neuron, slot, token, value) -> None:
        """Put flat token ``token`` (value ``value``) into list slot ``slot`` of ``neuron``."""
        t, k = self.t, self.cfg.k
        at = neuron * k + slot  # flat slot: one-dimensional indexing is the fast path
        t[f"{side}_values"].view(-1)[at] = value
        t[f"{side}_text"].view(-1)[at] = batch.text[token]
        t[f"{side}_pos"].view(-1)[at] = batch.pos[token]
        r, c = batch.row[token], batch.col[token]
        w = self.cfg.window
        cols = c.unsqueeze(1) + torch.arange(-w, w + 1, device=c.device)  # [m, W]
        ok = (cols >= batch.lo[r].unsqueeze(1)) & (cols < batch.hi[r].unsqueeze(1))
        width = x.shape[1]
        place = r.unsqueeze(1) * width + cols.clamp(0, width - 1)  # [m, W] row-major token
        ids = torch.where(ok, batch.ids.reshape(-1)[place], -1)
        vals = torch.where(ok, x.reshape(-1)[place * x.shape[2] + neuron.unsqueeze(1)], 0.0)
        W = 2 * w + 1
        t[f"{side}_window_ids"].view(-1, W)[at] = ids.to(torch.int32)
        t[f"{side}_window_values"].view(-1, W)[at] = vals

    # ------------------------------------------------------------------ results
    def state(self) -> dict[str, torch.Tensor]:
        """Return the running state (to checkpoint; :meth:`load` restores it exactly)."""
        return dict(self.t)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state written by :meth:`state` (shapes must match)."""
        for name, cur in self.t.items():
            got = state[name]
            if got.shape != cur.shape or got.dtype != cur.dtype:
                raise ValueError(f"{name} is {got.dtype} {tuple(got.shape)}")
            self.t[name] = got.to(cur.device).clone()

    def finish(self) -> dict[str, torch.Tensor]:
        """Return the per-neuron results: exemplars, density, mean, std and quantiles."""
        _SCRATCH.clear()  # the pass is over: the batch-sized buffer is not kept
        t = self.t
        n = max(int(t["n"]), 1)
        out: dict[str, torch.Tensor] = {}
        for side in SIDES:  # the lists are unordered while streaming: strongest first now,
            # equal values in corpus order (text, then position), whatever their slots
            order = t[f"{side}_pos"].sort(dim=1, stable=True).indices
            for key in ("text", "values"):
                cur = t[f"{side}_{key}"].gather(1, order)
                down = key == "values" and side == "top"
                order = order.gather(1, cur.sort(dim=1, descending=down, stable=True).indices)
            for name in ("values", "text", "pos", "window_ids", "window_values"):
                cur = t[f"{side}_{name}"]
                ix = order if cur.dim() == 2 else order.unsqueeze(-1).expand_as(cur)
                out[f"{side}_{name}"] = cur.gather(1, ix).cpu()
        mean = t["sum"] / n
        var = (t["sumsq"] / n - mean.square()).clamp(min=0)
        out["mean"] = mean.float().cpu()
        out["std"] = var.sqrt().float().cpu()
        out["density_above"] = (t["above"].double() / n).float().cpu()
        out["density_below"] = (t["below"].double() / n).float().cpu()
        m = min(int(t["n"]), self.cfg.sample)
        q = torch.tensor(self.cfg.quantiles, device=t["sample"].device)
        if m:
            out["quantiles"] = torch.quantile(t["sample"][:m], q, dim=0).T.contiguous().cpu()
        else:
            out["quantiles"] = torch.full((self.d, len(q)), float("nan"))
        return out


_SCRATCH: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def scratch(like: torch.Tensor) -> torch.Tensor:
    """Return a buffer shaped like ``like``, reused from call to call (grown when too small).

    One per device and dtype for every :class:`LayerStats`: the hooks run one layer at a
    time, and a buffer's content never outlives the statement that fills it."""
    key = (like.device, like.dtype)
    have = _SCRATCH.get(key)
    if have is None or have.numel() < like.numel():
        have = _SCRATCH[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    return have[: like.numel()].view(like.shape)


def reservoir(seen: int, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rows, slots)``: which of ``n`` new tokens enter a reservoir of ``size`` that
    has seen ``seen`` tokens, and where (Algorithm R; the generator is seeded by ``seed``, so
    a resumed run draws what an uninterrupted one would). A later row overwrites an earlier
    one in the same slot, as sequential sampling does."""
    idx = torch.arange(n, dtype=torch.long)
    g = seen + idx  # 0-based index of each token in the stream
    gen = torch.Generator().manual_seed(seed)
    draw = (torch.rand(n, generator=gen, dtype=torch.float64) * (g + 1).double()).long()
    slot = torch.where(g < size, g, draw)
    take = slot < size
    rows, slots = idx[take], slot[take]
    last: dict[int, int] = {}
    for r, s in zip(rows.tolist(), slots.tolist()):
        last[s] = r
    keep = sorted(last.items(), key=lambda kv: kv[1])
    return (
        torch.tensor([r for _, r in keep], dtype=torch.long),
        torch.tensor([s for s, _ in keep], dtype=torch.long),
    )
