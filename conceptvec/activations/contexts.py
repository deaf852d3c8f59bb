"""``top_contexts``: the tokens on which a neuron fires most (or least), in their context.

As Neuronpedia shows a neuron: each of the ``top`` tokens with the highest activation (the
lowest, ``bottom=True``), ``window`` tokens either side, the value and the text it came
from. Contexts run across window boundaries: they are cut from the whole text's tokens.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from conceptvec.errors import BadTextError
from conceptvec.neurons import NeuronId
from conceptvec.results import Result
from conceptvec.types import ModelSource, Tokenizer

from .read import Activations, read_activations

if TYPE_CHECKING:
    from conceptvec.types import PrettyPrinter


@dataclass
class Context:
    """One token of one text, with its neighbours and the neuron's activation on each."""

    text: int
    """Index of the text it came from."""
    position: int
    """Token position in that text."""
    token: str
    token_id: int
    value: float
    left: list[str]
    right: list[str]
    left_values: list[float]
    right_values: list[float]
    starts_text: bool = False
    """True if ``left`` reaches the text's first token."""
    ends_text: bool = False
    """True if ``right`` reaches the text's last token."""

    def snippet(self, mark: tuple[str, str] = ("[", "]")) -> str:
        """Return ``…left [token] right…`` on one line (newlines shown as ``⏎``)."""
        left = ("" if self.starts_text else "…") + _flat("".join(self.left))
        right = _flat("".join(self.right)) + ("" if self.ends_text else "…")
        return f"{left}{mark[0]}{_flat(self.token)}{mark[1]}{right}"


def _flat(s: str) -> str:
    return s.replace("\r", "").replace("\n", "⏎").replace("\t", " ")


@dataclass
class TopContexts(Result):
    """The ``top`` strongest (or weakest) activations of one neuron over some texts."""

    model: str
    neuron: str
    bottom: bool
    contexts: list[Context]
    n_tokens: int
    """Tokens read in all."""
    n_texts: int
    mean: float
    """Mean activation over every token read."""
    window: int
    """Tokens of context kept on each side."""
    add_bos: bool | None = None
    """Whether the texts were read with the model's BOS in front (see :class:`Activations`)."""

    def to_dict(self) -> dict[str, object]:
        """Return the contexts as plain lists and numbers (JSON-ready)."""
        return asdict(self)

    def _title(self) -> str:
        which = "lowest" if self.bottom else "highest"
        return (
            f"{self.model} {self.neuron}: {len(self.contexts)} {which} activations of "
            f"{self.n_tokens} tokens in {self.n_texts} text(s) (mean {self.mean:+.3f})"
        )

    def __str__(self) -> str:
        lines = [self._title()]
        if not self.contexts:
            return lines[0] + "\n  (no tokens)"
        for rank, c in enumerate(self.contexts, 1):
            lines.append(f"{rank:>4}  {c.value:+9.3f}  text {c.text:<4} {c.snippet()}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: PrettyPrinter, _cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        scale = max((abs(v) for c in self.contexts for v in _all_values(c)), default=0.0) or 1.0
        rows = []
        for rank, c in enumerate(self.contexts, 1):
            spans = [_span(t, v, scale) for t, v in zip(c.left, c.left_values)]
            spans.append(_span(c.token, c.value, scale, focus=True))
            spans += [_span(t, v, scale) for t, v in zip(c.right, c.right_values)]
            rows.append(
                f"<tr><td>{rank}</td><td style='text-align:right'>{c.value:+.3f}</td>"
                f"<td>{c.text}</td><td style='font-family:monospace;white-space:pre'>"
                f"{'' if c.starts_text else '…'}{''.join(spans)}"
                f"{'' if c.ends_text else '…'}</td></tr>"
            )
        return (
            f"<div><b>{html.escape(self._title())}</b><table>"
            "<tr><th>#</th><th>activation</th><th>text</th><th>context</th></tr>"
            + "".join(rows)
            + "</table></div>"
        )


def _all_values(c: Context) -> list[float]:
    return [c.value, *c.left_values, *c.right_values]


def _span(token: str, value: float, scale: float, focus: bool = False) -> str:
    alpha = min(abs(value) / scale, 1.0)
    rgb = "220,38,38" if value >= 0 else "37,99,235"  # red positive, blue negative
    style = f"background:rgba({rgb},{alpha:.2f})"
    if focus:
        style += ";font-weight:bold;outline:1px solid #333"
    return (
        f"<span title='{value:+.3f}' style='{style}'>{html.escape(_flat(token), quote=True)}</span>"
    )


def contexts_from(
    acts: Activations,
    neuron: NeuronId | str,
    *,
    top: int = 20,
    window: int = 8,
    bottom: bool = False,
) -> TopContexts:
    """Return the :class:`TopContexts` of ``neuron`` from activations already read."""
    if top < 1 or window < 0:
        raise BadTextError(f"top must be at least 1 and window at least 0, not {top}, {window}")
    j = acts.column(neuron)
    by_text: dict[int, tuple[list[int], list[str], list[torch.Tensor]]] = {}
    for w in sorted(acts.windows, key=lambda w: (w.text, w.start)):
        ids, toks, vals = by_text.setdefault(w.text, ([], [], []))
        ids += w.ids
        toks += w.tokens
        vals.append(w.values[:, j])
    flat_text: list[int] = []
    flat_pos: list[int] = []
    flat_vals: list[torch.Tensor] = []
    values: dict[int, list[float]] = {}
    for t, (ids, _toks, vals) in by_text.items():
        v = torch.cat(vals)
        values[t] = v.tolist()
        flat_text += [t] * len(ids)
        flat_pos += range(len(ids))
        flat_vals.append(v)
    allv = torch.cat(flat_vals) if flat_vals else torch.zeros(0)
    k = min(top, allv.numel())
    picked = torch.topk(allv, k, largest=not bottom).indices.tolist() if k else []
    contexts = []
    for i in picked:
        t, p = flat_text[i], flat_pos[i]
        ids, toks, _ = by_text[t]
        lo, hi = max(0, p - window), min(len(ids), p + 1 + window)
        contexts.append(
            Context(
                text=t,
                position=p,
                token=toks[p],
                token_id=ids[p],
                value=values[t][p],
                left=toks[lo:p],
                right=toks[p + 1 : hi],
                left_values=values[t][lo:p],
                right_values=values[t][p + 1 : hi],
                starts_text=lo == 0,
                ends_text=hi == len(ids),
            )
        )
    mean = float(allv.double().mean()) if allv.numel() else float("nan")
    return TopContexts(
        model=acts.model,
        neuron=str(NeuronId.parse(neuron)),
        bottom=bottom,
        contexts=contexts,
        n_tokens=allv.numel(),
        n_texts=acts.n_texts,
        mean=mean,
        window=window,
        add_bos=acts.add_bos,
    )


def top_contexts(
    model: ModelSource,
    neuron: NeuronId | str,
    texts: Sequence[str],
    *,
    top: int = 20,
    window: int = 8,
    tokenizer: Tokenizer | None = None,
    max_tokens: int = 256,
    bottom: bool = False,
    progress: bool = False,
) -> TopContexts:
    """Return the ``top`` tokens of ``texts`` where ``neuron`` fires highest (lowest, with
    ``bottom=True``), each with ``window`` tokens of context either side (``progress``: a
    bar over the forward passes on stderr).

    >>> print(top_contexts("smollm2-135m", "L29.808", ["My dog sleeps."], top=2))
    smollm2-135m L29.808: 2 highest activations of 5 tokens in 1 text(s) (mean -3.7...)
       1     -0.99...  text 0    My dog[ sleep]s.
       2     -1.00...  text 0    [My] dog sleeps.
    """
    if top < 1 or window < 0:
        raise BadTextError(f"top must be at least 1 and window at least 0, not {top}, {window}")
    acts = read_activations(
        model, texts, [neuron], tokenizer=tokenizer, max_tokens=max_tokens, progress=progress
    )
    return contexts_from(acts, neuron, top=top, window=window, bottom=bottom)
