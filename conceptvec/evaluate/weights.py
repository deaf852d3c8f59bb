"""Weight-level comparison of a base and an unlearned checkpoint, streamed from disk.

Two checkpoints are read one matrix at a time (never two whole models in memory). For
every neuron vector (a ``down`` column, an ``up``/``gate`` row) the change is measured in
**float64**: fine-tuning moves a column by 1e-3 relative or much less, and ``1 - cos`` is
about half the square of that (1e-6 and below), the size of float32's rounding error in a
cosine, so a float32 cosine and its percentile are noise. When the two checkpoints store
different dtypes (a bf16 checkpoint against a float32 one), both are first rounded to the
coarser dtype, so a change of storage precision does not read as unlearning (the report
records the dtypes). Per vector:

- ``cosine`` and ``l2`` (``||u - b||``), and ``rel_change`` = ``||u - b|| / ||b||``;
- the **percentile of its change** among all vectors of that matrix, whole model and same
  layer: a concept vector that moved less than a typical vector was not targeted, however
  its cosine reads (every column of SmolLM2 keeps a cosine above 0.99995 after GA). Both
  the relative change (``change_pct_*``) and the absolute one (``l2_pct_*``) are ranked:
  small columns move more relative to their norm under the same update. For methods that
  touch a few layers, read the same-layer percentile: the whole-model one is then dominated
  by the untouched columns (ties count half);
- for concept vectors: the Jaccard overlap of the top-``k`` decoded tokens before and after
  (``k`` = 200 and the raw ``W_U @ v`` recipe of ConceptVectors by default; ``folded``
  folds the final norm in, as conceptvec's decoding does), ConceptVectors'
  ``preciser_jaccard`` and related-token rate. Both vectors are decoded through the
  *base* model's head, so the overlap measures the vector's change alone.

:func:`compare_weights` also returns the whole-model change map (every layer and MLP
matrix: relative Frobenius change, how many vectors changed at all, median / 99th
percentile / max of their relative change) and the most-changed vectors with what they
decode to before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from conceptvec.concepts.tokens import STOPWORDS
from conceptvec.decoding import project
from conceptvec.errors import EvaluationError
from conceptvec.models import Model
from conceptvec.models.arch import text_config
from conceptvec.neurons import NeuronId
from conceptvec.progress import progress_bar
from conceptvec.results import Result
from conceptvec.tokens import token_text

from .concepts import EvalConcept

SIDES = ("top", "bottom")
RECIPES = ("raw", "folded")
"""``raw``: ``W_U @ v`` without the final norm (ConceptVectors' ``jaccard_similarity``);
``folded``: conceptvec's decoding, the final norm's gain (and centring) folded in."""


@dataclass
class VectorChange:
    """How one concept vector moved between the base and the unlearned checkpoint."""

    concept: str
    neuron: str
    side: str
    """The side the concept shows on (``top``/``bottom``); Jaccard and tokens use it."""
    cosine: float
    l2: float
    rel_change: float
    """``||u - b|| / ||b||``, float64."""
    base_norm: float
    change_pct_model: float
    """Percentile (0-100) of ``rel_change`` among every vector of the matrix in the model."""
    change_pct_layer: float
    """The same within the vector's own layer."""
    jaccard: float
    """Jaccard overlap of the top-``k`` decoded token sets, before vs. after."""
    preciser_jaccard: float | None
    """ConceptVectors' ``preciser_jaccard``: top-k tokens after that occur in the concept's
    text, over those before (None without text or when no top token occurs there)."""
    related_rate: float | None
    """ConceptVectors' related-token rate: share of the base's top-k tokens that occur in
    the concept's text and are still in the top-k after."""
    top_before: list[str] = field(default_factory=list)
    top_after: list[str] = field(default_factory=list)
    jaccard_pct_model: float | None = None
    """With ``all_jaccard``: percentile of its token change (``1 - jaccard``, on its side)
    among every down column's."""
    l2_pct_model: float | None = None
    """Percentile of ``l2`` among every down column of the model."""
    l2_pct_layer: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class MatrixChange:
    """One layer and matrix: how much it moved."""

    layer: int
    matrix: str
    rel_frobenius: float
    """``||U - B||_F / ||B||_F``."""
    changed: int
    """Vectors with any changed value (of ``vectors``)."""
    vectors: int
    median: float
    """Median relative change of the layer's vectors."""
    p99: float
    max: float
    expert: int | None = None
    """The expert, in a mixture-of-experts model (None when dense)."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``expert`` only in a mixture-of-experts model)."""
        out = asdict(self)
        if self.expert is None:
            del out["expert"]
        return out


@dataclass
class ChangedVector:
    """One of the most-changed vectors, with what it decodes to before and after."""

    neuron: str
    matrix: str
    rel_change: float
    cosine: float
    change_pct_model: float
    top_before: list[str]
    top_after: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class WeightComparison(Result):
    """The weight-level comparison of one unlearned checkpoint with its base."""

    k: int
    recipe: str
    concepts: list[VectorChange]
    matrices: list[MatrixChange]
    most_changed: list[ChangedVector]
    distribution: dict[str, dict[str, float]]
    """Per matrix, percentiles (p50, p90, p99, max) of every vector's relative change."""
    jaccard_all: dict[str, torch.Tensor] | None = None
    """Side (``top``/``bottom``) -> ``[n_layers, d_mlp]`` Jaccard@k of every down column
    (``all_jaccard=True``; a row per layer and expert in a mixture of experts)."""
    dtypes: tuple[str, str] = ("", "")
    """The stored dtypes of the base's and the unlearned checkpoint's down matrices."""
    jaccard_recomputed: int = 0
    """Columns whose top-k could not be certified unchanged and were decoded again."""

    @property
    def identical(self) -> bool:
        """Whether no MLP weight changed at all."""
        return all(m.changed == 0 for m in self.matrices)

    def __str__(self) -> str:
        changed = sum(1 for m in self.matrices if m.rel_frobenius > 0)
        lines = [
            f"weights ({self.recipe}, k={self.k}): {changed} of {len(self.matrices)} matrices "
            f"changed" + ("; identical" if self.identical else "")
        ]
        lines += [
            f"  {c.concept}: change percentile {c.change_pct_model:.1f}" for c in self.concepts
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "k": self.k,
            "recipe": self.recipe,
            "identical": self.identical,
            "concepts": [c.to_dict() for c in self.concepts],
            "matrices": [m.to_dict() for m in self.matrices],
            "most_changed": [c.to_dict() for c in self.most_changed],
            "distribution": self.distribution,
            "dtypes": list(self.dtypes),
            "all_jaccard": None
            if self.jaccard_all is None
            else {
                side: {
                    "mean": float(j.mean()),
                    "min": float(j.min()),
                    "below_1": int((j < 1).sum()),
                    "columns": int(j.numel()),
                }
                for side, j in self.jaccard_all.items()
            }
            | {"recomputed": self.jaccard_recomputed},
        }


def check_pair(base: Model, other: Model) -> None:
    """Raise :class:`EvaluationError` unless the two models can be compared vector by vector."""
    a, b = base.dims, other.dims
    fields = ("n_layers", "d_model", "d_mlp", "vocab", "n_experts")
    diff = [
        f"{f} {getattr(a, f)} vs {getattr(b, f)}" for f in fields if getattr(a, f) != getattr(b, f)
    ]
    kinds = [
        getattr(text_config(m.config), "model_type", None) or m.spec.family for m in (base, other)
    ]
    if kinds[0] != kinds[1]:
        diff.append(f"architecture {kinds[0]} vs {kinds[1]}")
    if diff:
        raise EvaluationError(
            f"{other.name} is not the same architecture as {base.name} ({'; '.join(diff)}); "
            "compare an unlearned checkpoint with the model it was made from"
        )
    ta, tb = base.tokenizer, other.tokenizer
    if ta is not None and tb is not None and ta.get_vocab() != tb.get_vocab():
        raise EvaluationError(
            f"{other.name} and {base.name} have different tokenizers; token overlaps would "
            "compare different tokens: compare checkpoints that share a tokenizer"
        )


def matrices_of(model: Model) -> tuple[str, ...]:
    """Return the MLP matrices of ``model`` (``up``, ``gate`` when gated, ``down``)."""
    return ("up", "gate", "down") if model.spec.gated else ("up", "down")


def units_of(model: Model) -> list[tuple[int, int | None]]:
    """Return every ``(layer, expert)`` with its own MLP matrices, in order (expert None in a
    dense model; every expert of every layer in a mixture of experts)."""
    experts: list[int | None] = [*range(model.dims.n_experts)] or [None]
    return [(layer, e) for layer in range(model.dims.n_layers) for e in experts]


def percentile_of(value: float, population: torch.Tensor) -> float:
    """Return the percentile (0-100) of ``value`` in ``population``: the share strictly
    below plus half the ties (so a value equal to everything sits at 50)."""
    below = int((population < value).sum())
    ties = int((population == value).sum())
    return 100.0 * (below + 0.5 * ties) / max(1, population.numel())


def column_changes(b: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return per-row float64 ``cosine``, ``l2``, ``rel`` and ``norm`` of ``[n, d]`` matrices."""
    b64, u64 = b.double(), u.double()
    delta = u64 - b64
    l2 = delta.norm(dim=1)
    nb, nu = b64.norm(dim=1), u64.norm(dim=1)
    cos = (b64 * u64).sum(1) / (nb * nu).clamp_min(1e-300)
    return {"cosine": cos.clamp(-1, 1), "l2": l2, "rel": l2 / nb.clamp_min(1e-300), "norm": nb}


def decoded_ids(
    model: Model, vectors: torch.Tensor, k: int, recipe: str, side: str = "top"
) -> torch.Tensor:
    """Return ``[n, k]`` ids of the top-``k`` tokens (``side="bottom"``: the most negative)
    of residual ``vectors`` under ``recipe`` (down columns: ``folded`` vectors must already
    carry the post-MLP norm gain, see :func:`recipe_vectors`)."""
    if recipe == "raw":
        w_u = model.unembedding()
        scores = vectors.float() @ w_u.float().T
    else:
        scores = project(model, vectors.float())
    if side == "bottom":
        scores = -scores
    return scores.topk(min(k, scores.shape[-1]), dim=-1).indices


def recipe_vectors(model: Model, layer: int, w: torch.Tensor, recipe: str) -> torch.Tensor:
    """Return down columns ``w`` as the recipe decodes them: ``folded`` applies the post-MLP
    norm gain (Gemma 2/3, OLMo 2), as :func:`conceptvec.decode` does; ``raw`` leaves them."""
    if recipe == "folded":
        g = model.mlp_out_gain(layer)
        if g is not None:
            return w.float() * g.to(w.device).float()
    return w


def coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype | None:
    """Return the coarser of two floating dtypes when they differ (None when equal)."""
    if a == b:
        return None
    return a if torch.finfo(a).eps > torch.finfo(b).eps else b


def text_token_ids(model: Model, text: str) -> set[int]:
    """Return the ids of the tokens of ``text``, stop words dropped (ConceptVectors' recipe for
    ``preciser_jaccard``; conceptvec's stop-word list)."""
    tok = model.tokenizer
    if not text or tok is None:
        return set()
    ids = set(tok(text, add_special_tokens=False)["input_ids"])
    show = token_text(tok)
    return {i for i in ids if show(i).strip().lower() not in STOPWORDS}


def compare_weights(
    base: Model,
    unlearned: Model,
    concepts: Sequence[EvalConcept],
    *,
    k: int = 200,
    recipe: str = "raw",
    top_changed: int = 10,
    show_tokens: int = 10,
    all_jaccard: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> WeightComparison:
    """Compare every MLP vector of ``unlearned`` with ``base``; see the module doc.

    ``all_jaccard=True`` also measures Jaccard@k for every down column (:class:`TopKOverlap`:
    one decoding of the base, and of the unlearned vector only where its top-k set is not
    provably unchanged). ``device`` (e.g. ``"cuda"``) is where the arithmetic runs; weights
    are still streamed one matrix at a time.
    """
    device = torch.device(device)
    if recipe not in RECIPES:
        raise EvaluationError(f"unknown recipe {recipe!r}; use raw or folded")
    if k < 1:
        raise EvaluationError(f"k must be >= 1 (got {k})")
    check_pair(base, unlearned)
    for c in concepts:
        base.dims.check(c.neuron)
    units = units_of(base)  # one row of every per-vector tensor below per (layer, expert)
    row_of = {unit: row for row, unit in enumerate(units)}
    n_layers = len(units)
    first = units[0][1]
    stored = (
        base.neurons(0, "down", expert=first).dtype,
        unlearned.neurons(0, "down", expert=first).dtype,
    )
    common = coarser(*stored)
    mats = matrices_of(base)
    rel: dict[str, torch.Tensor] = {}
    cos: dict[str, torch.Tensor] = {}
    maps: list[MatrixChange] = []
    wanted = {(row_of[c.neuron.layer, c.neuron.expert], c.neuron.index) for c in concepts}
    stats: dict[tuple[int, int], dict[str, float]] = {}
    vec_b: dict[tuple[int, int], torch.Tensor] = {}
    vec_u: dict[tuple[int, int], torch.Tensor] = {}
    bar = progress_bar(n_layers * len(mats), "comparing weights", progress)
    overlap = TopKOverlap(base, k, recipe, device=device) if all_jaccard else None
    jac_all = (
        {side: torch.ones(n_layers, base.dims.d_mlp, dtype=torch.float64) for side in SIDES}
        if all_jaccard
        else None
    )
    l2_down = torch.zeros(n_layers, base.dims.d_mlp, dtype=torch.float64)
    for m in mats:
        rel[m] = torch.zeros(n_layers, base.dims.d_mlp, dtype=torch.float64)
        cos[m] = torch.ones(n_layers, base.dims.d_mlp, dtype=torch.float64)
        for row, (layer, expert) in enumerate(units):
            b = base.neurons(layer, m, expert=expert).to(device)
            u = unlearned.neurons(layer, m, expert=expert).to(device)
            for model, w in ((base, b), (unlearned, u)):
                if w.is_floating_point() and not bool(torch.isfinite(w).all()):
                    raise EvaluationError(
                        f"{model.name}: the layer {layer} {m} weights hold NaN or infinity; "
                        "the checkpoint is broken (training diverged), not erased: re-run "
                        "unlearning with a lower --lr"
                    )
            if common is not None:  # compare at the coarser storage precision
                b, u = b.to(common), u.to(common)
            ch = {key: v.cpu() for key, v in column_changes(b, u).items()}
            rel[m][row], cos[m][row] = ch["rel"], ch["cosine"]
            diff = (u.double() - b.double()).norm().cpu()
            maps.append(
                MatrixChange(
                    layer,
                    m,
                    float(diff / b.double().norm().cpu().clamp_min(1e-300)),
                    int((ch["l2"] > 0).sum()),
                    int(ch["l2"].numel()),
                    float(ch["rel"].median()),
                    float(torch.quantile(ch["rel"], 0.99)),
                    float(ch["rel"].max()),
                    expert,
                )
            )
            if m == "down":
                l2_down[row] = ch["l2"]
            if m == "down" and overlap is not None and jac_all is not None:
                rb = recipe_vectors(base, layer, b, recipe)
                ru = recipe_vectors(base, layer, u, recipe)
                d = ch["l2"] if rb is b else (ru.double() - rb.double()).norm(dim=1).cpu()
                for side, j in overlap.layer(rb, ru, d.to(device)).items():
                    jac_all[side][row] = j.cpu()
            if m == "down":
                for r, idx in wanted:
                    if r == row:
                        stats[(r, idx)] = {key: float(v[idx]) for key, v in ch.items()}
                        vec_b[(r, idx)] = recipe_vectors(base, layer, b[idx], recipe).float().cpu()
                        vec_u[(r, idx)] = recipe_vectors(base, layer, u[idx], recipe).float().cpu()
            bar.update(1)
    bar.close()
    show = token_text(base.tokenizer) if base.tokenizer is not None else str
    changes: list[VectorChange] = []
    down = rel["down"]
    for c in concepts:
        row = row_of[c.neuron.layer, c.neuron.expert]
        own_layer = [r for r, (layer, _) in enumerate(units) if layer == c.neuron.layer]
        key = (row, c.neuron.index)
        s = stats[key]
        ids = decoded_ids(base, torch.stack([vec_b[key], vec_u[key]]), k, recipe, c.side)
        before, after = ids[0].tolist(), ids[1].tolist()
        jac = len(set(before) & set(after)) / len(set(before) | set(after))
        in_text = text_token_ids(base, c.text)
        left_b = [i for i in before if i in in_text]
        left_a = [i for i in after if i in in_text]
        kept = [i for i in left_b if i in set(after)]
        changes.append(
            VectorChange(
                c.name,
                str(c.neuron),
                c.side,
                s["cosine"],
                s["l2"],
                s["rel"],
                s["norm"],
                percentile_of(s["rel"], down),
                percentile_of(s["rel"], down[own_layer]),
                jac,
                len(left_a) / len(left_b) if left_b else None,
                len(kept) / len(left_b) if left_b else None,
                [show(i) for i in before[:show_tokens]],
                [show(i) for i in after[:show_tokens]],
                l2_pct_model=percentile_of(s["l2"], l2_down),
                l2_pct_layer=percentile_of(s["l2"], l2_down[own_layer]),
            )
        )
    most = _most_changed(base, unlearned, rel, cos, top_changed, show, units)
    dist = {
        m: {
            "p50": float(torch.quantile(r.flatten(), 0.5)),
            "p90": float(torch.quantile(r.flatten(), 0.9)),
            "p99": float(torch.quantile(r.flatten(), 0.99)),
            "max": float(r.max()),
        }
        for m, r in rel.items()
    }
    if jac_all is not None:
        for change in changes:
            n = NeuronId.parse(change.neuron)
            moved = 1 - jac_all[change.side]
            row = row_of[n.layer, n.expert]
            change.jaccard_pct_model = percentile_of(float(moved[row, n.index]), moved)
    return WeightComparison(
        k,
        recipe,
        changes,
        maps,
        most,
        dist,
        jaccard_all=jac_all,
        jaccard_recomputed=overlap.recomputed if overlap else 0,
        dtypes=(str(stored[0]).removeprefix("torch."), str(stored[1]).removeprefix("torch.")),
    )


class TopKOverlap:
    """Jaccard@k of every column of a layer, both sides, base vs. unlearned.

    The unlearned column's scores differ from the base's by at most ``||u - b|| * max_j
    ||W_j||`` per token (Cauchy-Schwarz), so when the gap between the base's k-th and
    (k+1)-th scores (on a side) exceeds twice that plus float32's rounding bound, that
    side's top-k *set* cannot have changed: Jaccard is 1 without decoding the unlearned
    column. Other columns are decoded and compared. Untouched columns (scoped methods,
    edits) and tiny changes are certified; full fine-tuning (GA on SmolLM2 moves columns by
    ~2e-3 relative) is beyond the bound, and then every column is decoded twice. The GEMMs
    run in true float32 (TF32 off), which the rounding bound assumes.
    """

    def __init__(
        self,
        model: Model,
        k: int,
        recipe: str,
        budget: int = 256 << 20,
        device: str | torch.device = "cpu",
    ):
        device = torch.device(device)
        w = model.unembedding()
        if recipe == "folded":
            from conceptvec.atlas.head import folded_rows

            w = folded_rows(model, slice(0, w.shape[0]))
        self.w = w.to(device).float().contiguous()
        self.w_max = float(self.w.double().norm(dim=1).max())
        if device.type == "cuda":
            budget = 4 << 30
        self.k = min(k, self.w.shape[0] - 1)
        self.rows = max(1, budget // (4 * self.w.shape[0]))
        self.recomputed = 0

    def layer(self, b: torch.Tensor, u: torch.Tensor, l2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return side -> float64 Jaccard@k per row of ``b`` vs. ``u`` (``l2``: float64
        ``||u - b||``)."""
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return {side: self._side(b, u, l2, sign) for side, sign in (("top", 1), ("bottom", -1))}
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def _side(self, b: torch.Tensor, u: torch.Tensor, l2: torch.Tensor, sign: int) -> torch.Tensor:
        out = torch.ones(b.shape[0], dtype=torch.float64, device=b.device)
        moved = (l2 > 0).nonzero().flatten()
        if moved.numel() == 0:
            return out
        d = b.shape[1]
        eps = 2.0**-23 * d  # float32 dot-product rounding, relative to |b| |w|
        for s in range(0, moved.numel(), self.rows):
            idx = moved[s : s + self.rows]
            bb, uu = b[idx].float(), u[idx].float()
            top = (sign * (bb @ self.w.T)).topk(self.k + 1, dim=-1)
            gap = (top.values[:, self.k - 1] - top.values[:, self.k]).double()
            norms = torch.maximum(bb.double().norm(dim=1), uu.double().norm(dim=1))
            bound = l2[idx] * self.w_max + 2 * eps * norms * self.w_max
            unsure = (gap <= 2 * bound).nonzero().flatten()
            if unsure.numel():
                self.recomputed += int(unsure.numel())
                after = (sign * (uu[unsure] @ self.w.T)).topk(self.k, dim=-1).indices
                before = top.indices[unsure, : self.k]
                for j, (x, y) in enumerate(zip(before.tolist(), after.tolist())):
                    sx, sy = set(x), set(y)
                    out[idx[unsure[j]]] = len(sx & sy) / len(sx | sy)
        return out


def _most_changed(
    base: Model,
    unlearned: Model,
    rel: dict[str, torch.Tensor],
    cos: dict[str, torch.Tensor],
    n: int,
    show: Any,
    units: list[tuple[int, int | None]],
) -> list[ChangedVector]:
    if n < 1:
        return []
    d_mlp = base.dims.d_mlp
    ranked = sorted(
        ((float(v), m, int(i)) for m, r in rel.items() for v, i in zip(*r.flatten().topk(n))),
        reverse=True,
    )[:n]
    out = []
    for value, m, flat in ranked:
        if value <= 0:
            break
        row, idx = divmod(flat, d_mlp)
        layer, expert = units[row]
        vb = base.neurons(layer, m, expert=expert)[idx].float()
        vu = unlearned.neurons(layer, m, expert=expert)[idx].float()
        ids = project(base, torch.stack([vb, vu])).topk(5, dim=-1).indices
        out.append(
            ChangedVector(
                str(NeuronId(layer, idx, expert)),
                m,
                value,
                float(cos[m][row, idx]),
                percentile_of(value, rel[m]),
                [show(i) for i in ids[0].tolist()],
                [show(i) for i in ids[1].tolist()],
            )
        )
    return out
