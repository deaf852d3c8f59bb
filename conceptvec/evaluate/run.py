"""``intrinsic(base, unlearned, concepts)``: did unlearning remove the concept, or hide it?

For each unlearned checkpoint and each concept vector, in one run that shares the base's
work (its references, activations and answers are computed once):

1. **weights** (:mod:`.weights`): cosine, L2, Jaccard@k, ConceptVectors' preciser Jaccard
   and related-token rate, and the percentile of the vector's change among all down columns
   (whole model and same layer), streamed from disk in float64; the whole-model change map;
2. **activation trace** (:mod:`.trace`): does it still fire on concept text? Label:
   erased / disconnected / intact;
3. **behaviour** (:mod:`.behaviour`): forget QA, retain QA and text completion, base vs.
   unlearned, against the base's own answers;
4. **attacks** (:mod:`.attacks`, a registry): ``recovery`` (clamp the vector to its base
   activation, or put the base vector back, against random same-layer controls),
   ``quant4`` (4-bit round trip) and ``relearn`` (a few steps on unrelated text), and any
   attack registered with :func:`.attacks.register_attack`: how much of the lost forget QA
   comes back.

When an unlearned checkpoint has an ``unlearning.json`` (``conceptvec unlearn``), its QA
uses the questions held out of training, for the concept it unlearned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conceptvec import limits
from conceptvec.checkpoint_record import UnlearningRecord
from conceptvec.config import EvalConfig
from conceptvec.errors import ConceptvecError, EvaluationError
from conceptvec.models import Model, load
from conceptvec.models.backends import Target, resolve
from conceptvec.progress import progress_bar

from .attacks import ATTACKS, AttackInput, run_attack
from .behaviour import ConceptProbes, apply_floor, base_probes, drop_noise, probe_model
from .collateral import collateral_concepts
from .concepts import EvalConcept, check_concepts, eval_concepts
from .depth import ALWAYS
from .metrics import DEFAULT as DEFAULT_METRICS
from .metrics import METRICS, MetricInput, compute
from .report import ConceptEval, EvalReport, RunEval
from .trace import NOT_MEASURED, concept_text, label, layer_activations, trace
from .weights import check_pair, compare_weights

logger = logging.getLogger(__name__)


def _once(sources: list[Any]) -> list[Any]:
    """Return ``sources`` with each checkpoint once (the same folder by any path, the same
    hub id or object), in order: a checkpoint given twice is measured once."""
    seen: set[Any] = set()
    out = []
    for s in sources:
        if isinstance(s, (str, os.PathLike)):
            key: Any = os.path.realpath(s) if os.path.exists(s) else os.fspath(s)
        else:
            key = id(s)
        if key in seen:
            logger.info("%s is given twice; it is measured once", s)
            continue
        seen.add(key)
        out.append(s)
    return out


def _open(source: Any, what: str) -> Model:
    if isinstance(source, Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.exists() and p.is_dir() and not (p / "config.json").exists():
            raise EvaluationError(
                f"{what} {p} is not a model folder (no config.json); pass the folder "
                "`conceptvec unlearn` wrote, or a checkpoint with config.json and safetensors"
            )
    try:
        return load(source, quiet=True)
    except ConceptvecError as e:
        raise EvaluationError(f"{what} {source}: {e}") from None


def _record(source: Any) -> UnlearningRecord | None:
    """Return the ``unlearning.json`` record beside a checkpoint folder (None when none)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    return UnlearningRecord.read(source)


def _run_names(sources: list[Any], models: list[Model]) -> list[str]:
    """Name each run by its folder's name when those are unique, else by the model's name."""
    short = [
        Path(s).name if isinstance(s, (str, os.PathLike)) else m.name
        for s, m in zip(sources, models)
    ]
    return short if len(set(short)) == len(short) else [m.name for m in models]


def _summary(record: UnlearningRecord | None) -> dict[str, Any]:
    """What a report shows of a checkpoint's record: method, steps, lr, scope, ..."""
    if record is None:
        return {}
    out = {
        "method": record.method,
        "steps_done": record.steps_done,
        "lr": record.lr,
        "scope": record.scope,
        "neuron": record.neuron,
        "seed": record.seed,
        "wall_seconds": record.wall_seconds,
        "concept": record.concept_name,
    }
    if record.config:
        out["config"] = record.config
    return out


def _shared_heldout(
    records: list[UnlearningRecord | None], concept: str
) -> tuple[dict[str, list[str]] | None, str]:
    """Return the held-out questions of the first record that unlearned ``concept``, and its
    method: every run is then scored on the same questions, so rows compare."""
    for r in records:
        if r is None or r.concept_name.casefold() != concept.casefold():
            continue
        held, unrelated = r.heldout()
        if held:
            return {"qa": held, "unrelated": unrelated}, f"{r.method or 'a run'} (seed {r.seed})"
    return None, ""


def intrinsic(
    base: Any,
    unlearned: Any,
    concepts: Any,
    config: EvalConfig | Mapping[str, Any] | None = None,
    *,
    probes: Any = None,
    progress: bool = False,
    **settings: Any,
) -> EvalReport:
    """Return the :class:`EvalReport` of ``unlearned`` (one checkpoint or a list) against
    ``base`` on ``concepts`` (see :func:`.concepts.eval_concepts`); module doc for the steps.

    ``config`` is an :class:`EvalConfig` (or its dict); ``settings`` are its fields as
    keywords, applied on top (``qa=False`` skips behaviour and the attacks, which need it;
    ``trace_activations=False`` skips the activation trace: weights only is then seconds;
    ``attacks`` names registered attacks, :data:`.attacks.ATTACKS`: ``recovery``,
    ``quant4``, ``relearn`` and any added with :func:`.attacks.register_attack`;
    ``all_jaccard`` measures Jaccard@k of every down column too, so a concept's token
    change gets a percentile as well). The report records the whole config.
    """
    clock = _Timings()
    cfg = EvalConfig.build(config, **settings)
    attacks = ATTACKS.check(cfg.attacks)
    METRICS.check(cfg.metrics)
    if attacks and not cfg.qa:
        raise EvaluationError("attacks are measured on the forget QA; drop qa=False / --no-qa")
    if cfg.controls < 0 or cfg.max_new_tokens < 1 or cfg.relearn_steps < 0:
        raise EvaluationError("controls, max_new_tokens and relearn steps must be >= 0 / 1 / 0")
    if cfg.relearn_steps > limits.STEPS or not math.isfinite(cfg.relearn_lr):
        raise EvaluationError(
            f"relearn steps must be at most {limits.STEPS:,} and the relearn learning rate a "
            f"finite number (got {cfg.relearn_steps}, {cfg.relearn_lr}); fix --relearn-*"
        )
    from conceptvec.unlearning.train import PRECISIONS  # (the trainer: imported when used)

    if cfg.relearn_precision not in PRECISIONS:
        raise EvaluationError(
            f"unknown relearn precision {cfg.relearn_precision!r}; use {', '.join(PRECISIONS)}"
        )
    sources = _once(list(unlearned) if isinstance(unlearned, (list, tuple)) else [unlearned])
    if not sources:
        raise EvaluationError("no unlearned checkpoint given; pass at least one")
    items = eval_concepts(concepts, probes, cfg.names)
    for name in attacks:  # each attack refuses what it cannot use before any model loads
        check = ATTACKS[name].check
        if check is not None:
            for c in items:
                check(c, (concepts, probes), cfg)
    b = _open(base, "base")
    check_concepts(items, b.dims.n_layers, b.dims.d_mlp, b.name)
    models = [(_open(s, "unlearned checkpoint"), _record(s)) for s in sources]
    for u, _ in models:  # every pair and input checked before minutes of work
        check_pair(b, u)
    if cfg.qa:
        empty = [c.name for c in items if not c.qa]
        if empty:
            raise EvaluationError(
                f"{empty[0]!r} has no QA to evaluate; pass a concepts file with QA (--probes) "
                "or --no-qa"
            )
    held_by = {c.name: _shared_heldout([r for _, r in models], c.name) for c in items}
    names = _run_names(sources, [m for m, _ in models])
    live = cfg.qa or cfg.trace_activations
    base_target = resolve(b) if live else None
    shared: dict[str, Any] = {}
    runs: list[RunEval] = []
    stages = progress_bar(len(models) * len(items), "evaluating concepts", progress and live)
    clock.stop("open")
    others = collateral_concepts(concepts, items, b.dims.n_layers, b.dims.d_mlp)
    for (u, record), run_name in zip(models, names):
        comparison = compare_weights(
            b,
            u,
            items + others,
            k=cfg.k,
            recipe=cfg.recipe,
            all_jaccard=cfg.all_jaccard,
            device=cfg.device,
            progress=progress,
        )
        clock.stop("weights")
        collateral = comparison.concepts[len(items) :]
        comparison.concepts = comparison.concepts[: len(items)]
        target = resolve(u) if base_target is not None else None
        clock.stop("open")
        evals = []
        for c, vec in zip(items, comparison.concepts):
            stages.set_postfix_str(f"{run_name}: {c.name}")
            held, source = held_by[c.name]
            questions = f"held-out by {source}" if held else "all"
            t = None
            if cfg.trace_activations and c.text and base_target is not None and target is not None:
                texts = concept_text(c.text)
                key = f"trace:{c.name}:{c.neuron.layer}"
                if key not in shared:
                    shared[key] = layer_activations(base_target, texts, c.neuron.layer)
                t = trace(shared[key], target, texts, c.neuron)
                clock.stop("trace")
            lab, why = label(vec.cosine, vec.jaccard, t, cfg.thresholds)
            if cfg.trace_activations and not c.text and lab == NOT_MEASURED:
                why = "weights intact; no concept text, so no activation trace"
            ev = ConceptEval(c.name, str(c.neuron), vec, lab, why, t, questions=questions)
            if cfg.qa and base_target is not None and target is not None:
                p = _probes(shared, base_target, c, held, cfg)
                clock.stop("base_qa")
                ev.base_behaviour = p.base
                ev.behaviour = probe_model(  # rows this model scored for another concept: kept
                    target, p, max_new_tokens=cfg.max_new_tokens,
                    memo=shared.setdefault(f"rows:run{len(runs)}", {}),
                )  # fmt: skip
                clock.stop("qa")
                inp = AttackInput(
                    base_target, target, u, c, p, ev.behaviour["forget"].logprob, cfg,
                    (concepts, probes), shared,
                )  # fmt: skip
                ev.recovery = []
                for a in attacks:  # each attack timed on its own: users see which one costs
                    ev.recovery += run_attack(a, inp)
                    clock.stop(f"attack:{a}")
                noise = drop_noise(
                    p.base["forget"].per_question, ev.behaviour["forget"].per_question
                )
                apply_floor(ev.recovery, inp.unlearned_logprob, inp.base_logprob, noise)
            ev.metrics = compute(
                [*cfg.metrics, *ALWAYS], MetricInput(b, u, c, ev, cfg, base_target, target, shared)
            )
            if cfg.metrics:
                clock.stop("metrics")
            evals.append(ev)
            stages.update(1)
        runs.append(RunEval(run_name, comparison, evals, _summary(record), collateral))
        target = None
        if u._hf_loader is not None and u is not unlearned and u not in sources:
            u._hf = None  # a checkpoint we opened: its torch model is not needed again
    stages.close()
    report_settings = {
        "k": cfg.k,
        "recipe": cfg.recipe,
        "all_jaccard": cfg.all_jaccard,
        "decoding_head": "base",
        "change_measure": "||u - b|| / ||b||, float64",
        "qa": cfg.qa,
        "trace": cfg.trace_activations,
        "attacks": list(attacks),
        "controls": cfg.controls,
        "max_new_tokens": cfg.max_new_tokens,
        "references": "the base model's greedy answers",
        **{name: _attack_settings(name, cfg) for name in ATTACKS if ATTACKS[name].settings},
        "thresholds": cfg.thresholds.__dict__,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
    }
    return EvalReport(b.name, runs, report_settings, clock.done())


class _Timings:
    """Wall seconds per stage: :meth:`stop` books the time since the last stop to a stage."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def stop(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now

    def done(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self.start}


def _attack_settings(name: str, cfg: EvalConfig) -> dict[str, Any] | None:
    """Return what the report records of attack ``name`` (None when it did not run)."""
    make = ATTACKS[name].settings
    return make(cfg) if make is not None and name in cfg.attacks else None


def _probes(
    shared: dict, base: Target, c: EvalConcept, held: dict | None, cfg: EvalConfig
) -> ConceptProbes:
    max_q, seed = cfg.max_questions, cfg.seed
    questions = list(held["qa"]) if held else list(c.qa)
    unrelated = list(held["unrelated"]) if held and held["unrelated"] else list(c.unrelated_qa)
    if max_q is not None:
        rng = random.Random(seed)
        questions = questions[:max_q]
        unrelated = rng.sample(unrelated, min(max_q, len(unrelated)))
    completions = [tc.first_half for tc in c.completions][: max_q or None]
    if not questions:
        raise EvaluationError(
            f"{c.name!r} has no QA to evaluate; pass a concepts file with QA (--probes) or --no-qa"
        )
    key = json.dumps([c.name, questions, unrelated, completions])
    if key not in shared:
        shared[key] = base_probes(
            base, questions, unrelated, completions, max_new_tokens=cfg.max_new_tokens,
            chat=cfg.chat, memo=shared.setdefault("rows:base", {}),
        )  # fmt: skip
    return shared[key]


def score(
    base: Any,
    unlearned: Any,
    concepts: Any,
    *,
    qa: bool = False,
    trace_activations: bool = False,
    probes: Any = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Return a plain dict for any harness (TOFU, MUSE, RWKU loops, open-unlearning).

    ``agg_value``: the mean over concepts of the concept vector's change percentile among
    all down columns (0-100; ~50 means moved like a typical column, i.e. not targeted);
    ``value_by_concept``: per concept, every metric of :data:`.metrics.DEFAULT` (the vector's
    numbers, label, QA drops), those of ``metrics=[...]`` and each attack's recovered share;
    ``report``: the full
    :meth:`EvalReport.to_dict`. Weights only by default (seconds); ``qa=True`` and
    ``trace_activations=True`` add behaviour and the activation trace.
    """
    cfg = EvalConfig.build(options.pop("config", None), **options)
    extra = [m for m in cfg.metrics if m not in DEFAULT_METRICS]
    cfg = cfg.replace(
        qa=qa, trace_activations=trace_activations, metrics=[*DEFAULT_METRICS, *extra]
    )
    report = intrinsic(base, unlearned, concepts, cfg, probes=probes, progress=progress)
    run = report.runs[0]
    by: dict[str, dict[str, Any]] = {}
    for c in run.concepts:
        by[c.concept] = {
            "neuron": c.neuron,
            **c.metrics,
            **{f"recovered[{r.attack}]": r.recovered for r in c.recovery},
        }
    agg = sum(v["change_pct_model"] for v in by.values()) / len(by)
    return {"agg_value": agg, "value_by_concept": by, "report": report.to_dict()}
