"""Decode neurons (or any residual-stream vector) into vocabulary terms through the LM head.

The recipe, recorded with every result::

    v        = neuron vector              (up/gate row: what it reads; down column: what it writes)
    v        = g_out * v                  (down only, Gemma 2/3 and OLMo 2: post-MLP norm gain)
    v        = v - mean(v)                (LayerNorm models: the final norm centres)
    v        = g_final * v                (final-norm gain folded in; Gemma's gain is 1 + w)
    scores   = W_U @ v                    [vocab], accumulated in float32
    top/bottom-k of scores

With ``fold_norm=False`` only ``W_U @ v`` is used. Probabilities (``probs=True``) are what
the model would predict if its final residual stream were exactly ``v``:
``softmax(softcap(W_U @ final_norm(v)))``, using the real norm with its scale and bias.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload

import torch

from conceptvec.results import Result
from conceptvec.types import ModelSource

from .models import Model, load
from .neurons import NeuronId, check_matrix
from .tokens import show


@dataclass(frozen=True)
class TokenScore(Result):
    """One decoded token: its id, readable text, logit score and (optionally) probability."""

    id: int
    token: str
    score: float
    prob: float | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the token as a plain dict."""
        d = {"id": self.id, "token": self.token, "score": self.score}
        if self.prob is not None:
            d["prob"] = self.prob
        return d


@dataclass
class Decoding(Result):
    """Top and bottom tokens of one neuron (or vector) projected through the LM head."""

    model: str
    neuron: NeuronId | None
    matrix: str | None
    top: list[TokenScore]
    bottom: list[TokenScore]
    recipe: dict[str, object] = field(default_factory=dict)

    @property
    def top_tokens(self) -> list[str]:
        """The top tokens' text, best first."""
        return [t.token for t in self.top]

    @property
    def bottom_tokens(self) -> list[str]:
        """The bottom tokens' text, most negative first."""
        return [t.token for t in self.bottom]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (what ``conceptvec neuron --json`` prints)."""
        return {
            "model": self.model,
            "neuron": str(self.neuron) if self.neuron is not None else None,
            "matrix": self.matrix,
            "top": [t.to_dict() for t in self.top],
            "bottom": [t.to_dict() for t in self.bottom],
            "recipe": self.recipe,
        }

    def __str__(self) -> str:
        what = f"{self.neuron} ({self.matrix})" if self.neuron is not None else "vector"
        fold = "final norm folded" if self.recipe.get("fold_norm") else "no norm folding"
        lines = [f"{self.model}  {what}  [{fold}]"]
        width = max([len(show(t.token)) for t in self.top + self.bottom] + [12])
        has_p = any(t.prob is not None for t in self.top)
        head = f"{'':>3}  {'top':<{width}} {'score':>8}" + (f" {'prob':>7}" if has_p else "")
        lines.append(head + f"   {'bottom':<{width}} {'score':>8}")
        for i in range(max(len(self.top), len(self.bottom))):
            row = f"{i + 1:>3}  "
            if i < len(self.top):
                t = self.top[i]
                row += f"{show(t.token):<{width}} {t.score:>8.3f}"
                row += f" {t.prob:>7.4f}" if t.prob is not None else ""
            else:
                row += " " * (width + 9 + (8 if has_p else 0))
            if i < len(self.bottom):
                b = self.bottom[i]
                row += f"   {show(b.token):<{width}} {b.score:>8.3f}"
            lines.append(row.rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{i + 1}</td><td><code>{html.escape(show(t.token))}</code></td>"
            f"<td>{t.score:.3f}</td><td><code>{html.escape(show(b.token))}</code></td>"
            f"<td>{b.score:.3f}</td></tr>"
            for i, (t, b) in enumerate(zip(self.top, self.bottom))
        )
        what = f"{self.neuron} ({self.matrix})" if self.neuron is not None else "vector"
        return (
            f"<b>{html.escape(self.model)} {what}</b><table><tr><th>#</th><th>top</th>"
            f"<th>score</th><th>bottom</th><th>score</th></tr>{rows}</table>"
        )


def residual_vectors(
    model: Model, layer: int, matrix: str, fold_norm: bool = True, expert: int | None = None
) -> torch.Tensor:
    """Return ``[d_mlp, d_model]`` float32: every neuron of a layer (of one ``expert`` in a
    mixture-of-experts model) as a residual-space vector.

    For ``down`` with ``fold_norm``, the post-MLP norm gain (Gemma 2/3, OLMo 2) is applied.
    """
    w = model.neurons(layer, matrix, expert=expert).float()
    if fold_norm and matrix == "down":
        g = model.mlp_out_gain(layer)
        if g is not None:
            w = w * g
    return w


@dataclass(frozen=True)
class NormFold:
    """The final norm's linear part: centre over ``d_model`` (LayerNorm models), then multiply
    by the gain ``[d_model]`` (Gemma's is ``1 + w``). The one place it is applied, to
    residual vectors (:func:`project`, :func:`final_logits`) or folded into unembedding rows
    (:mod:`conceptvec.atlas.head`)."""

    gain: torch.Tensor | None
    center: bool

    @classmethod
    def of(cls, model: Model, fold: bool = True) -> NormFold:
        """Return the fold of ``model``'s final norm (nothing to do when ``fold`` is False)."""
        if not fold:
            return cls(None, False)
        return cls(model.final_norm_gain(), model.spec.centers)

    def vectors(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``[n, d_model]`` float32: residual vectors centred, then times the gain."""
        v = v.float()
        if self.center:
            v = v - v.mean(-1, keepdim=True)
        return v * self.gain.to(v.device) if self.gain is not None else v

    def rows(self, w: torch.Tensor) -> torch.Tensor:
        """Return unembedding rows ``[n, d_model]`` as a new float32 tensor with the fold in:
        ``v @ rows(W).T`` equals ``vectors(v) @ W.T`` for any vector ``v``."""
        w = w.float() if w.dtype != torch.float32 else w.clone()
        if self.gain is not None:
            w.mul_(self.gain.to(w.device))
        if self.center:
            w.sub_(w.mean(-1, keepdim=True))
        return w


def project(
    model: Model, vectors: torch.Tensor, fold_norm: bool = True, chunk: int = 16384
) -> torch.Tensor:
    """Return ``[n, vocab]`` float32 scores of residual-space ``vectors`` ``[n, d_model]``.

    The unembedding is upcast to float32 ``chunk`` vocabulary rows at a time, so a bf16
    128k-vocabulary head never needs a full float32 copy.
    """
    v = NormFold.of(model, fold_norm).vectors(vectors)
    w_u = model.unembedding()
    if w_u.dtype == torch.float32:
        return v @ w_u.T
    return torch.cat([v @ part.float().T for part in w_u.split(chunk)], dim=-1)


def final_logits(model: Model, vectors: torch.Tensor) -> torch.Tensor:
    """Return ``[n, vocab]``: the logits the model gives when its final residual is ``vectors``."""
    v = vectors.float()
    fold = NormFold.of(model)
    centred = v - v.mean(-1, keepdim=True) if fold.center else v
    eps = model.spec.norm_eps(model.config)
    v = fold.vectors(v * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps))
    b = model.final_norm_bias()
    if b is not None:
        v = v + b
    logits = v @ model.unembedding().to(torch.float32).T
    cap = model.dims.logit_softcap
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return logits


def _recipe(model: Model, matrix: str | None, fold_norm: bool) -> dict[str, object]:
    steps = []
    if fold_norm and matrix == "down" and model.has_mlp_out_norm:
        steps.append("post_mlp_norm_gain")
    if fold_norm and model.spec.centers:
        steps.append("center")
    if fold_norm and model.spec.final_norm:
        steps.append("final_norm_gain" + ("(1+w)" if model.spec.gain_offset == 1 else ""))
    steps.append("unembed")
    return {
        "fold_norm": fold_norm,
        "norm_style": model.spec.norm_style,
        "steps": steps,
        "accumulate": "float32",
    }


NeuronLike = str | NeuronId | tuple[int, int]


@overload
def decode(  # type: ignore[overload-overlap]  # a str is a Sequence[str]: the first wins
    model: ModelSource,
    what: NeuronLike,
    matrix: str = ...,
    k: int = ...,
    *,
    fold_norm: bool = ...,
    probs: bool = ...,
) -> Decoding: ...


@overload
def decode(
    model: ModelSource,
    what: Sequence[str | NeuronId],
    matrix: str = ...,
    k: int = ...,
    *,
    fold_norm: bool = ...,
    probs: bool = ...,
) -> list[Decoding]: ...


@overload
def decode(
    model: ModelSource,
    what: torch.Tensor,
    matrix: str = ...,
    k: int = ...,
    *,
    fold_norm: bool = ...,
    probs: bool = ...,
) -> Decoding | list[Decoding]: ...


def decode(
    model: ModelSource,
    what: NeuronLike | Sequence[str | NeuronId] | torch.Tensor,
    matrix: str = "down",
    k: int = 20,
    *,
    fold_norm: bool = True,
    probs: bool = False,
) -> Decoding | list[Decoding]:
    """Return the top-k and bottom-k tokens of a neuron, a list of neurons, or vectors.

    ``model`` is a :class:`Model` or anything :func:`conceptvec.load` accepts. ``what`` is a
    neuron id (``"L12.345"``, ``NeuronId(12, 345)``): one Decoding; a list of them: a list,
    one Decoding each; or a tensor ``[d_model]`` (one Decoding) / ``[n, d_model]`` (a list)
    of residual-stream vectors. :func:`decode_many` always returns a list.

    >>> d = decode("smollm2-135m", "L29.883", matrix="down", k=5)
    >>> d.top_tokens
    [' light', 'light', ' Light', 'Light', 'lights']
    """
    m = load(model)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, m.dims.vocab)
    if isinstance(what, torch.Tensor):
        vectors = what.reshape(-1, what.shape[-1])
        if vectors.shape[-1] != m.dims.d_model:
            raise ValueError(
                f"vectors must have d_model={m.dims.d_model} entries, got shape {tuple(what.shape)}"
            )
        out = _decode_vectors(m, vectors, [None] * len(vectors), None, k, fold_norm, probs)
        return out[0] if what.dim() == 1 else out
    single = isinstance(what, (str, NeuronId, tuple))
    if isinstance(what, (str, NeuronId, tuple)):
        neurons = [NeuronId.parse(what)]
    else:
        neurons = [NeuronId.parse(n) for n in what]
    matrix = check_matrix(matrix, m.spec.gated)
    for n in neurons:
        m.dims.check(n)
    rows: dict[NeuronId, torch.Tensor] = {}
    for layer, expert in {(n.layer, n.expert) for n in neurons}:  # each matrix is read once
        layer_vectors = residual_vectors(m, layer, matrix, fold_norm, expert)
        for n in neurons:
            if (n.layer, n.expert) == (layer, expert):
                rows[n] = layer_vectors[n.index]
    vectors = torch.stack([rows[n] for n in neurons])
    out = _decode_vectors(m, vectors, neurons, matrix, k, fold_norm, probs)
    return out[0] if single else out


def decode_many(
    model: ModelSource,
    what: Sequence[str | NeuronId] | torch.Tensor,
    matrix: str = "down",
    k: int = 20,
    *,
    fold_norm: bool = True,
    probs: bool = False,
) -> list[Decoding]:
    """Return one :class:`Decoding` per neuron of ``what`` (a list of ids) or per row of a
    tensor ``[n, d_model]`` (a ``[d_model]`` vector is one row): always a list."""
    if isinstance(what, torch.Tensor):
        return _as_list(
            decode(
                model, what.reshape(-1, what.shape[-1]), matrix, k, fold_norm=fold_norm, probs=probs
            )
        )
    ids: list[str | NeuronId] = (
        [NeuronId.parse(what)] if isinstance(what, (str, NeuronId, tuple)) else list(what)
    )
    return _as_list(decode(model, ids, matrix, k, fold_norm=fold_norm, probs=probs))


def _as_list(out: Decoding | list[Decoding]) -> list[Decoding]:
    return out if isinstance(out, list) else [out]


DECODE_BATCH = 256
"""Vectors projected through the LM head at once: ``[256, vocab]`` float32 scores (50 MB
for a 49k vocabulary), however many neurons one call decodes."""


def _decode_vectors(
    m: Model,
    vectors: torch.Tensor,
    neurons: Iterable[NeuronId | None],
    matrix: str | None,
    k: int,
    fold_norm: bool,
    probs: bool,
) -> list[Decoding]:
    rows = list(neurons)
    out: list[Decoding] = []
    for at in range(0, len(rows), DECODE_BATCH):
        part = slice(at, at + DECODE_BATCH)
        out += _decode_batch(m, vectors[part], rows[part], matrix, k, fold_norm, probs)
    return out


def _decode_batch(
    m: Model,
    vectors: torch.Tensor,
    neurons: list[NeuronId | None],
    matrix: str | None,
    k: int,
    fold_norm: bool,
    probs: bool,
) -> list[Decoding]:
    scores = project(m, vectors, fold_norm)
    top_v, top_i = scores.topk(k, dim=-1)
    bot_v, bot_i = scores.topk(k, dim=-1, largest=False)
    p = torch.softmax(final_logits(m, vectors), dim=-1) if probs else None
    text = m.token_text()
    recipe = _recipe(m, matrix, fold_norm)
    out = []
    for row, neuron in enumerate(neurons):

        def tokens(ids, vals, row=row):
            return [
                TokenScore(int(i), text(i), float(v), float(p[row, i]) if p is not None else None)
                for i, v in zip(ids.tolist(), vals.tolist())
            ]

        out.append(
            Decoding(
                model=m.name,
                neuron=neuron,
                matrix=matrix,
                top=tokens(top_i[row], top_v[row]),
                bottom=tokens(bot_i[row], bot_v[row]),
                recipe=dict(recipe),
            )
        )
    return out
