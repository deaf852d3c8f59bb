"""Behaviour before and after unlearning, and the attacks that try to bring the concept back.

References are the **base model's own greedy answers** (ConceptVectors has no gold answers;
:mod:`conceptvec.qa`), generated once per concept and shared by every checkpoint. Each
probe reports, per model, the teacher-forced log-probability per token of those answers
(continuous, sees what greedy text hides) and the ROUGE-L / BLEU of its own greedy answers
against them.

Recovery (the built-in attacks, registered in :mod:`.attacks`):

- ``recovery``: in the unlearned model, clamp the concept vector's activation to the *base*
  model's mean activation on the concept's prompts, or put the base vector back in the
  weights (``restore``); the same for ``controls`` random neurons of the same layer (each
  clamped to its own base mean, or given back its own base vector);
- ``quant4``: round-trip every linear weight of the decoder layers through 4-bit integers
  (symmetric, absmax per group of 64 inputs: the round-to-nearest scheme that exposes
  unlearning in Zhang et al. 2024, "Catastrophic failure of LLM unlearning via quantization");
- ``relearn``: a few AdamW steps of plain next-token training on text *unrelated* to the
  concept (other concepts' articles), then the forget QA again (Lynch et al. 2024, Hu et al.
  2024 relearn on related data; unrelated text is the harder test for the method).

The recovered share is ``(after attack - unlearned) / (base - unlearned)`` on the forget QA's
log-probability: 0 nothing came back, 1 everything did. It is None ("too little forgetting to
measure") when the loss ``base - unlearned`` is within the measurement's noise: not above
twice its standard error over the questions, nor above twice the spread (standard
deviation) of what the random same-layer controls' edits do to the forget log p, nor above
0.01 nats/token. Below that a ratio would only divide noise by a number near zero.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from conceptvec.activations import read_activations
from conceptvec.interventions.controls import percentile, random_controls
from conceptvec.interventions.edit_specs import NeuronEdit, clamp, replace_weights
from conceptvec.models.arch import spec_for_model_type, text_config
from conceptvec.models.backends import Target
from conceptvec.neurons import NeuronId
from conceptvec.qa import (
    answer_logprobs,
    answer_logprobs_many,
    answer_many,
    answer_scored,
    answer_sets,
    prompt_texts,
    text_scores,
    use_chat,
)

LOST_FLOOR = 0.01
"""Nats per token: the least forget-QA loss that ever counts as measurable forgetting."""


@dataclass
class Probe:
    """One probe (forget QA, retain QA or text completion) on one model."""

    logprob: float
    """Mean teacher-forced log p per token of the base model's answers."""
    rouge_l: float | None = None
    bleu: float | None = None
    answers: list[str] = field(default_factory=list)
    per_question: list[float] = field(default_factory=list)
    """:attr:`logprob` of each question (their mean is ``logprob``)."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class ConceptProbes:
    """A concept's probes, as asked of the base model once (the references)."""

    questions: list[str]
    references: list[str]
    unrelated: list[str]
    unrelated_refs: list[str]
    completions: list[str]
    completion_refs: list[str]
    base: dict[str, Probe]
    base_mean: dict[str, float] = field(default_factory=dict)
    """Neuron -> the base model's mean activation on the concept's prompts."""
    prompting: str = "chat"


@dataclass
class Recovery:
    """One attack on one unlearned model: how much forget QA came back."""

    attack: str
    logprob: float
    """Forget-QA log p per token after the attack."""
    recovered: float | None
    control_recovered: list[float] = field(default_factory=list)
    percentile: float | None = None
    """Percentile of ``recovered`` among the controls' (100: more than every control)."""
    detail: str = ""
    rouge_l: float | None = None
    base_logprob: float | None = None
    """The base model's forget-QA log p under the same attack (``quant4``: what the
    quantization alone costs), when measured."""
    recovered_vs_attacked_base: float | None = None
    """``(after attack - unlearned) / (base after the same attack - unlearned)``: the share
    recovered relative to what the attack leaves of the base itself."""
    floor: float = LOST_FLOOR
    """The least forget-QA loss (nats/token) for which ``recovered`` is given: twice the
    controls' spread, at least :data:`LOST_FLOOR` (see :func:`noise_floor`)."""
    profile: dict[str, Any] | None = None
    """``patch``: the depth profile, per layer the share recovered by patching the whole
    MLP activation (``mlp``) or the residual stream after the layer (``resid``)."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def base_probes(
    base: Target,
    questions: Sequence[str],
    unrelated: Sequence[str],
    completions: Sequence[str],
    *,
    max_new_tokens: int,
    chat: bool | None,
    memo: dict | None = None,
) -> ConceptProbes:
    """Ask the base model every probe once; its answers become the references.

    ``memo``: scores already taken of this model, by prompt and answer (see
    :func:`rows_once`): concepts whose probes share questions score them once."""
    is_chat = use_chat(base, chat)
    refs, urefs, crefs = answer_sets(  # generated together: one batch, not three
        base,
        [(questions, False), (unrelated, False), (completions, True)],
        chat=is_chat,
        max_new_tokens=max_new_tokens,
    )
    probes = ConceptProbes(
        list(questions),
        refs,
        list(unrelated),
        urefs,
        list(completions),
        crefs,
        {},
        prompting="chat" if is_chat else "paper",
    )
    probes.base = {}
    for name, qs, rs, raw in _sides(probes):
        lps = _logprobs(base, qs, rs, is_chat, raw, memo)
        probes.base[name] = Probe(_mean(lps), 1.0, 1.0, rs, per_question=list(lps))
    return probes


def rows_once(memo: dict | None, keys: list, compute: Callable[[list[int]], list]) -> list:
    """Return the value of each of ``keys``: from ``memo`` where it holds one, else from
    ``compute(indices)`` (the values of those rows, in that order), each distinct key once,
    and kept in ``memo``. ``memo=None`` computes every row.

    An evaluation keeps one memo per model: ConceptVectors draws a concept's unrelated
    questions from other concepts' questions, so concepts evaluated together share rows,
    and each is scored once. A row's value is the same quantity wherever it was computed
    (its batch neighbours change only the last bits of a float)."""
    if memo is None:
        return compute(list(range(len(keys))))
    first: dict = {}
    for i, k in enumerate(keys):
        if k not in memo and k not in first:
            first[k] = i
    if first:
        for k, v in zip(first, compute(list(first.values()))):
            memo[k] = v
    return [memo[k] for k in keys]


def _logprobs(
    model: Target, qs: list[str], rs: list[str], chat: bool, raw: bool, memo: dict | None
) -> list[float]:
    keys = [("logprob", chat, raw, q, r) for q, r in zip(qs, rs)]
    return rows_once(
        memo,
        keys,
        lambda idx: answer_logprobs(
            model, [qs[i] for i in idx], [rs[i] for i in idx], chat=chat, raw=raw
        ),
    )


def _sides(p: ConceptProbes) -> list[tuple[str, list[str], list[str], bool]]:
    out = [("forget", p.questions, p.references, False)]
    if p.unrelated:
        out.append(("retain", p.unrelated, p.unrelated_refs, False))
    if p.completions:
        out.append(("completion", p.completions, p.completion_refs, True))
    return out


def _answers_scored(
    model: Target,
    qs: list[str],
    rs: list[str],
    chat: bool,
    raw: bool,
    max_new_tokens: int,
    memo: dict | None,
) -> tuple[list[str], list[float]]:
    """(greedy answers, log p of ``rs``) of ``model`` from one pass per batch: the base's
    answers ``rs`` scored and checked as drafts of the model's own (``answer_scored``)."""

    def compute(idx: list[int]) -> list[tuple[str, float]]:
        a, lp = answer_scored(
            model, [qs[i] for i in idx], [rs[i] for i in idx], chat=chat, raw=raw,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return list(zip(a, lp))

    keys = [("scored", chat, raw, max_new_tokens, q, r) for q, r in zip(qs, rs)]
    pairs = rows_once(memo, keys, compute)
    return [a for a, _ in pairs], [lp for _, lp in pairs]


def probe_model(
    model: Target,
    probes: ConceptProbes,
    *,
    max_new_tokens: int,
    generate: bool = True,
    memo: dict | None = None,
) -> dict[str, Probe]:
    """Return each probe of ``probes`` on ``model``, scored against the base's answers (its
    greedy answers found by verifying the base's as drafts: :func:`conceptvec.qa.answer_scored`)."""
    chat = probes.prompting == "chat"
    out = {}
    for name, qs, refs, raw in _sides(probes):
        if not generate:
            lps = list(_logprobs(model, qs, refs, chat, raw, memo))
            out[name] = Probe(_mean(lps), per_question=lps)
            continue

        ans, lps = _answers_scored(model, qs, refs, chat, raw, max_new_tokens, memo)
        s = text_scores(ans, refs)
        out[name] = Probe(_mean(lps), _mean(s["rouge_l"]), _mean(s["bleu"]), ans, lps)
    return out


def base_means(
    base: Target, probes: ConceptProbes, neurons: Sequence[NeuronId]
) -> dict[str, float]:
    """Return each neuron's mean activation in the base model over the teacher-forced forget
    sequences: each prompt as the model sees it (chat template included) followed by the
    reference answer, i.e. the positions whose predictions the forget QA scores."""
    chat = probes.prompting == "chat"
    sep = "" if chat else " "
    texts = [
        p + sep + a.strip()
        for p, a in zip(prompt_texts(base, probes.questions, chat), probes.references)
    ]
    acts = read_activations(base, texts, list(neurons), max_tokens=512)
    return {str(n): float(acts.values(n).mean()) for n in neurons}


def _recovered(
    after: float, unlearned: float, base: float, floor: float = LOST_FLOOR
) -> float | None:
    lost = base - unlearned
    return None if lost <= floor else (after - unlearned) / lost


def noise_floor(control_moves: Sequence[float]) -> float:
    """Return the least forget-QA loss that a recovered share can measure: twice the standard
    deviation of ``control_moves`` (what random controls' edits did to the forget log p),
    at least :data:`LOST_FLOOR`."""
    if len(control_moves) < 2:
        return LOST_FLOOR
    mean = _mean(control_moves)
    var = sum((m - mean) ** 2 for m in control_moves) / (len(control_moves) - 1)
    return max(LOST_FLOOR, 2 * var**0.5)


def drop_noise(base: Sequence[float], unlearned: Sequence[float]) -> float:
    """Return twice the standard error of the mean forget drop over the questions (the
    per-question drops ``base - unlearned`` scatter; with few questions a small mean drop is
    within that scatter). 0 with fewer than two questions."""
    drops = [b - u for b, u in zip(base, unlearned)]
    if len(drops) < 2:
        return 0.0
    mean = _mean(drops)
    var = sum((d - mean) ** 2 for d in drops) / (len(drops) - 1)
    return 2 * (var / len(drops)) ** 0.5


def apply_floor(
    recoveries: Sequence[Recovery], unlearned: float, base: float, noise: float = 0.0
) -> None:
    """Give every attack on one concept one floor: the largest of :data:`LOST_FLOOR`, the
    controls' spread any of them measured (:func:`noise_floor`) and ``noise``, the forget
    drop's own scatter over the questions (:func:`drop_noise`); drop the recovered shares of
    a concept whose forget drop is not above it."""
    floor = max([LOST_FLOOR, noise, *(r.floor for r in recoveries)])
    for r in recoveries:
        r.floor = floor
        if base - unlearned <= floor:
            r.recovered = None
            r.control_recovered = []
            r.percentile = None
            if r.profile is not None:  # the patch attack's per-layer shares likewise
                r.profile.update({k: [None] * len(r.profile[k]) for k in ("mlp", "resid")})


def recovery(
    base: Target,
    unlearned: Target,
    neuron: NeuronId,
    probes: ConceptProbes,
    unlearned_logprob: float,
    *,
    controls: int,
    seed: int,
    max_new_tokens: int,
) -> list[Recovery]:
    """Clamp the concept vector to its base activation, zero it (the reference a clamp must
    beat: a clamp to a value near 0 is a zero ablation), and put the base vector back, in
    ``unlearned``; the same on random same-layer controls. Returns three :class:`Recovery`.

    A control percentile is given only where the controls were changed by unlearning at
    all: after a scoped method their base vectors equal their unlearned ones, so putting
    them back cannot recover anything and a percentile of 100 would say nothing."""
    d_mlp = base.model.dims.d_mlp
    ctrl = [
        c[0].neuron
        for c in random_controls([clamp(neuron, 0.0)], d_mlp, controls, seed)
        if isinstance(c[0], NeuronEdit)  # always: a clamp's controls are clamps
    ]
    missing = [n for n in [neuron, *ctrl] if str(n) not in probes.base_mean]
    if missing:
        probes.base_mean.update(base_means(base, probes, missing))
    mean = probes.base_mean
    base_lp = probes.base["forget"].logprob
    chat = probes.prompting == "chat"
    out = []
    untouched = all(
        torch.equal(base.model.neuron_vector(n), unlearned.model.neuron_vector(n)) for n in ctrl
    )
    kinds: dict[str, Callable[[NeuronId], list[Any]]] = {
        "clamp": lambda n: [clamp(n, mean[str(n)])],
        "zero": lambda n: [clamp(n, 0.0)],
        "restore": lambda n: [replace_weights(n, base.model.neuron_vector(n).clone())],
    }
    edits_of = {attack: [make(neuron)] + [make(n) for n in ctrl] for attack, make in kinds.items()}
    # every edit of the three kinds in one call: the unedited layers below run once
    every = [e for attack in kinds for e in edits_of[attack]]
    lps = iter(
        answer_logprobs_many(unlearned, probes.questions, probes.references, every, chat=chat)
    )
    scores_of = {attack: [_mean(next(lps)) for _ in edits_of[attack]] for attack in kinds}
    moved = [k for k in kinds if not (k == "restore" and untouched)]  # restore: all 0 then
    floor = noise_floor([s - unlearned_logprob for k in moved for s in scores_of[k][1:]])
    # the real vector's three edits: the unlearned model's answers verified under each
    answers = dict(
        zip(
            kinds,
            answer_many(
                unlearned,
                probes.questions,
                [edits_of[a][0] for a in kinds],
                chat=chat,
                max_new_tokens=max_new_tokens,
            ),
        )
    )
    for attack in kinds:
        scores = scores_of[attack]
        rec = [_recovered(s, unlearned_logprob, base_lp, floor) for s in scores]
        real, others = rec[0], [r for r in rec[1:] if r is not None]
        ans = answers[attack]
        rouge = _mean(text_scores(ans, probes.references)["rouge_l"])
        detail = {
            "clamp": f"{neuron} clamped to its base mean {mean[str(neuron)]:+.3f} over the "
            "teacher-forced forget sequences",
            "zero": f"{neuron} zeroed (the reference for the clamp)",
            "restore": f"{neuron}'s base vector put back",
        }[attack]
        pct = None if real is None else percentile(real, others)
        if attack == "restore" and untouched:
            pct = None
            detail += "; the controls' vectors were not changed by unlearning"
        out.append(
            Recovery(
                f"recovery:{attack}",
                scores[0],
                real,
                others,
                pct,
                detail + f"; {len(ctrl)} random {neuron.layer}-layer controls",
                rouge,
                floor=floor,
            )
        )
    return out


@contextlib.contextmanager
def quantized(
    model: torch.nn.Module,
    bits: int = 4,
    group: int = 64,
    roundtrip: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[int]:
    """Round-trip every 2-D weight of the decoder blocks (not the embeddings or the head)
    through ``bits``-bit integers (symmetric absmax per ``group`` consecutive values of a
    row; for GPT-2's Conv1D that is per output) inside the block; restore it after, bit for
    bit. Yields the number of matrices touched. The embeddings and the unembedding are the
    ones the model's :class:`ArchSpec` names; a mixture of experts' stacked expert weights
    ``[experts, out, in]`` are quantized row by row like the same matrices kept apart.
    ``roundtrip`` (a float32 ``[rows, cols]`` matrix in, its round trip out) replaces the
    absmax scheme, e.g. :func:`gguf_q4_0`."""
    spec = spec_for_model_type(str(getattr(text_config(model.config), "model_type", None)))
    skip = tuple(k for k in (spec.embed, spec.pos_embed, spec.unembed) if k)
    stacked = tuple({key.rpartition(".")[2] for key, _, _ in spec.stacked.values()})
    layers = [
        (name, p)
        for name, p in model.named_parameters()
        if (p.ndim == 2 and name.endswith("weight") or p.ndim == 3 and name.endswith(stacked))
        and not name.endswith(skip)
    ]
    if not layers:
        raise ValueError(f"no decoder matrix found to quantize in {type(model).__name__}")
    saved = [p.detach().to("cpu", copy=True) for _, p in layers]
    levels = 2 ** (bits - 1) - 1
    try:
        with torch.no_grad():
            for _, p in layers:
                w = p.float().reshape(-1, p.shape[-1])
                if roundtrip is not None:
                    p.copy_(roundtrip(w).reshape(p.shape).to(p.dtype))
                    continue
                rows, cols = w.shape
                pad = (-cols) % group
                g = torch.nn.functional.pad(w, (0, pad)).view(rows, -1, group)
                scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / levels
                q = (g / scale).round().clamp(-levels - 1, levels) * scale
                p.copy_(q.view(rows, -1)[:, :cols].reshape(p.shape).to(p.dtype))
        yield len(layers)
    finally:
        with torch.no_grad():
            for (_, p), s in zip(layers, saved):
                p.copy_(s.to(p.device))


def gguf_q4_0(w: torch.Tensor) -> torch.Tensor:
    """Return ``w`` (float32 ``[rows, cols]``) round-tripped through GGUF's Q4_0 with the
    ``gguf`` package's own quantizer (blocks of 32 along a row, zero-padded to a multiple)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    rows, cols = w.shape
    pad = (-cols) % 32
    a = torch.nn.functional.pad(w.detach().cpu().float(), (0, pad)).numpy()
    q = quantize(np.ascontiguousarray(a), GGMLQuantizationType.Q4_0)
    back = torch.from_numpy(dequantize(q, GGMLQuantizationType.Q4_0).copy())
    return back[:, :cols].to(w.device)


def relearned(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steps: int,
    lr: float,
    batch_size: int = 4,
    max_length: int = 256,
    seed: int = 0,
    precision: str = "auto",
) -> torch.nn.Module:
    """Return a copy of ``model`` after ``steps`` AdamW steps of next-token loss on ``texts``
    (chunks of ``max_length`` tokens, taken in a seeded order). ``model`` is untouched.

    ``precision`` is the training's (:data:`conceptvec.unlearning.train.PRECISIONS`): ``auto``
    computes the forward in bf16 over float32 weights and AdamW state where the hardware has
    bf16 matrix units, as ``unlearn`` does; ``fp32`` throughout otherwise."""
    from conceptvec.unlearning.train import autocast, resolve_precision

    ids = [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    chunks = [ids[s : s + max_length] for s in range(0, len(ids) - 1, max_length)]
    chunks = [c for c in chunks if len(c) > 1]
    if not chunks:
        raise ValueError("no unrelated text to relearn on")
    gen = torch.Generator().manual_seed(seed)
    trained = copy.deepcopy(model)
    trained.train()
    device = next(trained.parameters()).device
    precision = resolve_precision(precision, device.type)
    opt = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for _ in range(steps):
        pick = torch.randint(len(chunks), (batch_size,), generator=gen).tolist()
        rows = [chunks[i] for i in pick]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            x[r, : len(row)] = torch.tensor(row)
            labels[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        with autocast(trained, precision):  # the backward runs outside, as torch advises
            loss = trained(
                input_ids=x.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            ).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    trained.eval()
    return trained
