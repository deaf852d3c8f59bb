"""Which tokens of a forward pass are prompt and which are generated.

A :class:`PassTracker` sees the token ids at the start of every forward pass of the model
(a forward pre-hook on the HF module) and keeps:

- ``prompt_len``: the length of the prompt, set by a pass that starts a new sequence;
- ``offset``: the absolute position of the current pass's first token.

With a KV cache (``generate`` in transformers), the first pass is the prompt and later passes
hold one new token each, at ``offset = cache length``. Without a cache (TransformerLens'
``generate(use_past_kv_cache=False)``), every pass re-reads the whole sequence; a pass whose
ids are the previous pass's ids plus exactly one token is read as the next step of the same
generation, not a new prompt. Any other pass without a cache starts a new prompt. (So, inside
one ``with`` block, a prompt that happens to be the previous one plus one token counts as
its continuation; use a new block for unrelated prompts.)
"""

from __future__ import annotations

import torch


class PassTracker:
    """The prompt length and the current pass's offset, updated once per forward pass."""

    def __init__(self) -> None:
        self.prompt_len: int | None = None
        self.offset = 0
        self.passes = 0
        self._seq: torch.Tensor | None = None

    def begin(self, ids: torch.Tensor | None, length: int, past: int = 0) -> None:
        """Record a forward pass over ``length`` new tokens after ``past`` cached ones."""
        self.passes += 1
        if past > 0:
            self.offset = past
            if self.prompt_len is None:
                self.prompt_len = past
            if ids is not None and self._seq is not None and self._seq.shape[0] == ids.shape[0]:
                self._seq = torch.cat([self._seq, ids.to(self._seq.device)], dim=1)
            return
        self.offset = 0
        if not self._extends(ids):
            self.prompt_len = length
        self._seq = ids

    def _extends(self, ids: torch.Tensor | None) -> bool:
        prev = self._seq
        if ids is None or prev is None or ids.ndim != 2 or prev.shape[0] != ids.shape[0]:
            return False
        n = prev.shape[1]
        return ids.shape[1] == n + 1 and torch.equal(ids[:, :n].to(prev.device), prev)

    def select(self, positions: str, length: int) -> slice | None:
        """Return the slice of this pass's ``length`` tokens that ``positions`` covers, or
        None when it covers none of them."""
        if positions == "all":
            return slice(None)
        prompt_len = self.prompt_len if self.prompt_len is not None else length
        in_prompt = min(max(prompt_len - self.offset, 0), length)
        if positions == "prompt":
            span = slice(0, in_prompt)
        elif positions == "generated":
            span = slice(in_prompt, length)
        else:  # last prompt token
            p = prompt_len - 1 - self.offset
            span = slice(p, p + 1) if 0 <= p < length else slice(0, 0)
        return span if span.stop > span.start else None
