"""``read_activations``: what chosen MLP neurons do on each token of some texts, with sign.

The place read is the MLP's hidden activation, ``act(gate(x)) * up(x)``, the input of the
down projection: the same place interventions edit (``mlp.down_proj``'s input, GPT-2's
``mlp.c_proj``; ``blocks.L.mlp.hook_post`` in TransformerLens). Readers return their input
unchanged, so a hooked forward pass is bit-identical to an unhooked one; they count their
firings and are removed on exit, exceptions included.

Long texts are tokenized once and cut into windows of at most ``max_tokens`` tokens; each
window gets the model's own prefix (its BOS, when the model's own Hugging Face tokenizer
adds one: the same rule on every backend, see :attr:`Target.prefix`), whose position is run
but not reported, since it is the same in every window and not part of the
text. Windows are batched with right padding and an attention mask; padded positions are
dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from conceptvec.errors import BadTextError, HookNeverFiredError
from conceptvec.interventions.apply import forward_with, pad_id
from conceptvec.models.backends import resolve
from conceptvec.neurons import NeuronId
from conceptvec.results import Result
from conceptvec.tokens import token_text
from conceptvec.types import ModelSource, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Window:
    """One stretch of one text, as the model read it."""

    text: int
    """Index of the text in the list given to :func:`read_activations`."""
    start: int
    """Position of the window's first token among the text's tokens."""
    ids: list[int]
    """Token ids (without the tokenizer's BOS, which is run but not reported)."""
    tokens: list[str]
    """Readable token strings, leading spaces kept."""
    values: torch.Tensor
    """``[tokens, n_neurons]`` float32 activations, signed."""


@dataclass
class Activations(Result):
    """The MLP hidden activations of some neurons on every token of some texts."""

    model: str
    neurons: list[NeuronId]
    windows: list[Window]
    n_texts: int
    max_tokens: int
    """The window length used (BOS included)."""
    texts_without_tokens: list[int] = field(default_factory=list)
    """Indices of texts that tokenized to nothing (empty or blank)."""
    add_bos: bool | None = None
    """Whether each window was run with the model's BOS in front (the model's own Hugging
    Face tokenizer rule, the same on every backend)."""

    def column(self, neuron: NeuronId | str) -> int:
        """Return the column of ``neuron`` in each window's ``values``."""
        n = NeuronId.parse(neuron)
        try:
            return self.neurons.index(n)
        except ValueError:
            read = ", ".join(str(x) for x in self.neurons)
            raise BadTextError(f"{n} was not read; these activations hold {read}") from None

    def values(self, neuron: NeuronId | str) -> torch.Tensor:
        """Return ``[tokens]``: the neuron's activation on every token, window after window."""
        j = self.column(neuron)
        if not self.windows:
            return torch.zeros(0)
        return torch.cat([w.values[:, j] for w in self.windows])

    def mean(self, neuron: NeuronId | str) -> float:
        """Return the neuron's mean activation over every token (nan without tokens)."""
        v = self.values(neuron)
        return float(v.double().mean()) if v.numel() else float("nan")

    def text_values(self, text: int, neuron: NeuronId | str) -> torch.Tensor:
        """Return ``[tokens]``: the neuron's activation on each token of text ``text``."""
        j = self.column(neuron)
        parts = [w.values[:, j] for w in self.windows if w.text == text]
        return torch.cat(parts) if parts else torch.zeros(0)

    @property
    def n_tokens(self) -> int:
        """How many tokens were read (padding and BOS excluded)."""
        return sum(len(w.ids) for w in self.windows)

    def to_dict(self) -> dict[str, object]:
        """Return the activations as plain lists and numbers (JSON-ready)."""
        return {
            "model": self.model,
            "neurons": [str(n) for n in self.neurons],
            "n_texts": self.n_texts,
            "max_tokens": self.max_tokens,
            "texts_without_tokens": list(self.texts_without_tokens),
            "add_bos": self.add_bos,
            "windows": [
                {
                    "text": w.text,
                    "start": w.start,
                    "ids": list(w.ids),
                    "tokens": list(w.tokens),
                    "values": w.values.tolist(),
                }
                for w in self.windows
            ],
        }

    def __str__(self) -> str:
        lines = [repr(self), f"  {'neuron':<10} {'mean':>9} {'max':>9}"]
        for n in self.neurons:
            v = self.values(n)
            top = float(v.max()) if v.numel() else float("nan")
            lines.append(f"  {str(n):<10} {self.mean(n):>9.4f} {top:>9.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        neurons = ", ".join(str(n) for n in self.neurons)
        return (
            f"Activations({self.model}: [{neurons}] on {self.n_tokens} tokens of "
            f"{self.n_texts} texts in {len(self.windows)} windows)"
        )


# ---------------------------------------------------------------------- windows
def plan_windows(
    tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int, prefix: Sequence[int] = ()
) -> tuple[list[tuple[int, int, list[int]]], list[int]]:
    """Return ``(windows, empty)``: ``(text index, start, ids)`` per window of at most
    ``max_tokens - len(prefix)`` text tokens, and the indices of texts without tokens."""
    step = max_tokens - len(prefix)
    windows: list[tuple[int, int, list[int]]] = []
    empty: list[int] = []
    for i, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if not ids:
            empty.append(i)
        windows += [(i, s, ids[s : s + step]) for s in range(0, len(ids), step)]
    return windows, empty


# ---------------------------------------------------------------------- reading
class _Readers:
    """Read-only hook functions, one per layer: each keeps its neurons' columns (float32)
    of the last pass and counts its firings."""

    def __init__(self, columns: dict[int, list[int]]):
        self.columns = columns
        self.fired: Counter = Counter()
        self.seen: dict[int, torch.Tensor] = {}

    def keep(self, layer: int, x: torch.Tensor) -> None:
        self.fired[layer] += 1
        self.seen[layer] = x.detach()[..., self.columns[layer]].float()

    def fn(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def read(x: torch.Tensor) -> torch.Tensor:
            self.keep(layer, x)
            return x

        return read


def read_activations(
    model: ModelSource,
    texts: Sequence[str],
    neurons: Sequence[NeuronId | str],
    *,
    tokenizer: Tokenizer | None = None,
    batch_size: int = 8,
    max_tokens: int = 256,
    progress: bool = False,
) -> Activations:
    """Return the MLP hidden activation of each neuron on each token of ``texts``.

    ``model`` is a :class:`conceptvec.Model` (or alias), a ``transformers`` causal LM, a
    TransformerLens ``TransformerBridge`` or an nnsight model. Texts longer than
    ``max_tokens`` (capped at the model's context) are read in consecutive windows.

    >>> acts = read_activations("smollm2-135m", ["A dog barked."], ["L29.808"])
    >>> acts.values("L29.808").round(decimals=1)  # one value per token, signed
    tensor([ -1.0000, -10.0000,  -2.7000,  -4.3000,  -1.5000])
    """
    target = resolve(model, tokenizer)
    tok = target.tokenizer
    if tok is None:
        raise BadTextError(f"{target.model.name} has no tokenizer; pass one (tokenizer=tok)")
    if isinstance(neurons, (str, NeuronId)):
        neurons = [neurons]
    d = target.model.dims
    ns = [NeuronId.parse(n).check(d.n_layers, d.d_mlp) for n in neurons]
    if not ns:
        raise BadTextError("no neuron given; pass at least one, e.g. ['L29.808']")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise BadTextError("texts must be a non-empty list of strings")
    if batch_size < 1:
        raise BadTextError(f"batch_size must be at least 1, not {batch_size}")

    prefix = target.prefix
    limit = target.model.context_length
    if limit is not None and max_tokens > limit:
        log.info(
            "max_tokens %d is above the model's context %d; using %d", max_tokens, limit, limit
        )
        max_tokens = limit
    if max_tokens <= len(prefix):
        raise BadTextError(f"max_tokens must be above {len(prefix)} (the BOS), not {max_tokens}")
    plan, empty = plan_windows(tok, texts, max_tokens, prefix)
    if not plan:
        raise BadTextError(f"the {len(texts)} text(s) hold no tokens; pass some non-empty text")

    columns: dict[int, list[int]] = {}
    for n in ns:
        columns.setdefault(n.layer, [])
        if n.index not in columns[n.layer]:
            columns[n.layer].append(n.index)
    where = [(columns[n.layer].index(n.index), n.layer) for n in ns]
    readers = _Readers(columns)
    pad = pad_id(target) or 0
    order = sorted(range(len(plan)), key=lambda k: -len(plan[k][2]))  # similar lengths
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    values: list[torch.Tensor | None] = [None] * len(plan)
    text = token_text(tok)
    hooks = {L: readers.fn(L) for L in columns}
    bar = _progress(batches, progress)
    with torch.no_grad():
        for batch in bar:
            rows = [prefix + plan[k][2] for k in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            readers.seen.clear()
            forward_with(target, ids.to(target.device), mask.to(target.device), hooks)
            missing = [L for L in columns if L not in readers.seen]
            if missing:
                raise HookNeverFiredError(
                    f"the reader on {target.point(missing[0], 'mlp')} never fired in a forward "
                    f"pass of {target.model.name}; is the model's MLP where its spec says?"
                )
            block = torch.stack([readers.seen[L][..., c] for c, L in where], dim=-1).cpu()
            for r, k in enumerate(batch):
                values[k] = block[r, len(prefix) : len(rows[r])].contiguous()
    windows = [
        Window(i, start, chunk, text.many(chunk), values[k])  # type: ignore[arg-type]
        for k, (i, start, chunk) in enumerate(plan)
    ]
    log.debug("reader firings: %s", dict(readers.fired))
    return Activations(
        target.model.name, ns, windows, len(texts), max_tokens, empty, target.add_bos
    )


def _progress(batches: list, on: bool) -> Any:
    if not on:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="reading activations", unit="batch")
