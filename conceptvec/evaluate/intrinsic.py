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
4. **attacks**: ``recovery`` (clamp the vector to its base activation, or put the base
   vector back, against random same-layer controls), ``quant4`` (4-bit round trip) and
   ``relearn`` (a few steps on unrelated text): how much of the lost forget QA comes back.

When an unlearned checkpoint has an ``unlearning.json`` (``conceptvec unlearn``), its QA
uses the questions held out of training, for the concept it unlearned.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conceptvec.errors import ConceptvecError, EvaluationError
from conceptvec.interventions.effect import progress_bar
from conceptvec.interventions.targets import Target, resolve
from conceptvec.models import Model, load

from .behaviour import (
    ATTACKS,
    ConceptProbes,
    Recovery,
    _recovered,
    base_probes,
    probe_model,
    quantized,
    recovery,
    relearned,
)
from .concepts import EvalConcept, check_concepts, eval_concepts, unrelated_texts
from .report import ConceptEval, EvalReport, RunEval
from .trace import TraceThresholds, concept_text, label, layer_activations, trace
from .weights import check_pair, compare_weights

RECORD = "unlearning.json"


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


def _record(source: Any) -> dict[str, Any]:
    """Return the ``unlearning.json`` beside a checkpoint folder ({} when none)."""
    if not isinstance(source, (str, os.PathLike)):
        return {}
    p = Path(source) / RECORD
    if not p.is_file():
        return {}
    from conceptvec.files import read_json

    try:
        data = read_json(p, EvaluationError, "the unlearning record")
    except ConceptvecError:
        return {}
    return data if isinstance(data, dict) else {}


def _run_names(sources: list[Any], models: list[Model]) -> list[str]:
    """Name each run by its folder's name when those are unique, else by the model's name."""
    short = [
        Path(s).name if isinstance(s, (str, os.PathLike)) else m.name
        for s, m in zip(sources, models)
    ]
    return short if len(set(short)) == len(short) else [m.name for m in models]


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "steps_done", "lr", "scope", "neuron", "seed", "wall_seconds")
    out = {k: record[k] for k in keys if k in record}
    if record:
        out["concept"] = _concept_name(record)
    return out


def _concept_name(record: dict[str, Any]) -> str:
    c = record.get("concept")
    return str(c.get("name", "")) if isinstance(c, dict) else str(c or "")


def _shared_heldout(
    records: list[dict[str, Any]], concept: str
) -> tuple[dict[str, list[str]] | None, str]:
    """Return the held-out questions of the first record that unlearned ``concept``, and its
    method: every run is then scored on the same questions, so rows compare."""
    for r in records:
        held = _heldout(r, concept)
        if held:
            return held, f"{r.get('method', 'a run')} (seed {r.get('seed', '?')})"
    return None, ""


def _heldout(record: dict[str, Any], concept: str) -> dict[str, list[str]] | None:
    """Return the held-out concept and unrelated questions of ``record`` for ``concept``."""
    if not record or _concept_name(record).casefold() != concept.casefold():
        return None
    data = record.get("data") or {}
    held = data.get("heldout_qa") if isinstance(data, dict) else None
    held_u = data.get("heldout_unrelated_qa") if isinstance(data, dict) else None
    if isinstance(held, list) and held and all(isinstance(q, str) for q in held):
        unrelated = held_u if isinstance(held_u, list) else []
        return {"qa": held, "unrelated": [q for q in unrelated if isinstance(q, str)]}
    return None


def intrinsic(
    base: Any,
    unlearned: Any,
    concepts: Any,
    *,
    probes: Any = None,
    names: Sequence[str] | None = None,
    qa: bool = True,
    trace_activations: bool = True,
    attacks: Sequence[str] = (),
    k: int = 200,
    recipe: str = "raw",
    all_jaccard: bool = False,
    device: str = "cpu",
    controls: int = 5,
    max_new_tokens: int = 32,
    max_questions: int | None = None,
    chat: bool | None = None,
    relearn_steps: int = 10,
    relearn_lr: float = 2e-5,
    thresholds: TraceThresholds | None = None,
    seed: int = 0,
    progress: bool = False,
) -> EvalReport:
    """Return the :class:`EvalReport` of ``unlearned`` (one checkpoint or a list) against
    ``base`` on ``concepts`` (see :func:`.concepts.eval_concepts`); module doc for the steps.

    ``qa=False`` skips behaviour (and the attacks, which need it); ``trace_activations=False``
    skips the activation trace (weights only is then seconds). ``attacks`` is any of
    ``recovery``, ``quant4``, ``relearn``. ``all_jaccard`` measures Jaccard@k for every
    down column too (:class:`.weights.TopKOverlap`), so a concept's token change gets a
    percentile as well.
    """
    thresholds = thresholds or TraceThresholds()
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise EvaluationError(f"unknown attack {unknown[0]!r}; use {', '.join(ATTACKS)}")
    if attacks and not qa:
        raise EvaluationError("attacks are measured on the forget QA; drop qa=False / --no-qa")
    if controls < 0 or max_new_tokens < 1 or relearn_steps < 0:
        raise EvaluationError("controls, max_new_tokens and relearn steps must be >= 0 / 1 / 0")
    sources = list(unlearned) if isinstance(unlearned, (list, tuple)) else [unlearned]
    if not sources:
        raise EvaluationError("no unlearned checkpoint given; pass at least one")
    b = _open(base, "base")
    items = eval_concepts(concepts, probes, names)
    check_concepts(items, b.dims.n_layers, b.dims.d_mlp, b.name)
    models = [(_open(s, "unlearned checkpoint"), _record(s)) for s in sources]
    for u, _ in models:  # every pair and input checked before minutes of work
        check_pair(b, u)
    if qa:
        empty = [c.name for c in items if not c.qa]
        if empty:
            raise EvaluationError(
                f"{empty[0]!r} has no QA to evaluate; pass a concepts file with QA (--probes) "
                "or --no-qa"
            )
    relearn_text = {}
    if "relearn" in attacks:
        for c in items:
            relearn_text[c.name] = unrelated_texts(concepts, probes, c.name)
            if not relearn_text[c.name]:
                raise EvaluationError(
                    f"relearn needs text unrelated to {c.name!r}: other concepts' "
                    "wikipedia_content that never names it, in the concepts file or --probes"
                )
    held_by = {c.name: _shared_heldout([r for _, r in models], c.name) for c in items}
    names = _run_names(sources, [m for m, _ in models])
    base_target = resolve(b) if (qa or trace_activations) else None
    shared: dict[str, tuple[ConceptProbes | None, Any]] = {}
    runs = []
    stages = progress_bar(
        len(models) * len(items), "evaluating concepts", progress and (qa or trace_activations)
    )
    for (u, record), run_name in zip(models, names):
        comparison = compare_weights(
            b,
            u,
            items,
            k=k,
            recipe=recipe,
            all_jaccard=all_jaccard,
            device=device,
            progress=progress,
        )
        target = resolve(u) if base_target is not None else None
        evals = []
        for c, vec in zip(items, comparison.concepts):
            stages.set_postfix_str(f"{run_name}: {c.name}")
            held, source = held_by[c.name]
            questions = f"held-out by {source}" if held else "all"
            t = None
            if trace_activations and c.text and base_target is not None and target is not None:
                texts = concept_text(c.text)
                key = f"trace:{c.name}:{c.neuron.layer}"
                if key not in shared:
                    shared[key] = (None, layer_activations(base_target, texts, c.neuron.layer))
                t = trace(shared[key][1], target, texts, c.neuron)
            lab, why = label(vec.cosine, vec.jaccard, t, thresholds)
            if trace_activations and not c.text and t is None and lab == "intact":
                why = "weights intact; no concept text, so no activation trace"
            ev = ConceptEval(c.name, str(c.neuron), vec, lab, why, t, questions=questions)
            if qa and base_target is not None and target is not None:
                p = _probes(shared, base_target, c, held, max_questions, max_new_tokens, chat, seed)
                ev.base_behaviour = p.base
                ev.behaviour = probe_model(target, p, max_new_tokens=max_new_tokens)
                ev.recovery = _attacks(
                    attacks,
                    shared,
                    base_target,
                    u,
                    target,
                    c,
                    p,
                    ev,
                    relearn_text.get(c.name, []),
                    controls=controls,
                    seed=seed,
                    max_new_tokens=max_new_tokens,
                    relearn_steps=relearn_steps,
                    relearn_lr=relearn_lr,
                )
            evals.append(ev)
            stages.update(1)
        runs.append(RunEval(run_name, comparison, evals, _summary(record)))
        target = None
        if u._hf_loader is not None and u is not unlearned and u not in sources:
            u._hf = None  # a checkpoint we opened: its torch model is not needed again
    stages.close()
    settings = {
        "k": k,
        "recipe": recipe,
        "all_jaccard": all_jaccard,
        "decoding_head": "base",
        "change_measure": "||u - b|| / ||b||, float64",
        "qa": qa,
        "trace": trace_activations,
        "attacks": list(attacks),
        "controls": controls,
        "max_new_tokens": max_new_tokens,
        "references": "the base model's greedy answers",
        "relearn": {"steps": relearn_steps, "lr": relearn_lr} if "relearn" in attacks else None,
        "quant4": {"bits": 4, "group": 64, "scheme": "symmetric absmax, round to nearest"}
        if "quant4" in attacks
        else None,
        "thresholds": thresholds.__dict__,
        "seed": seed,
    }
    return EvalReport(b.name, runs, settings)


def _probes(
    shared: dict,
    base: Target,
    c: EvalConcept,
    held: dict | None,
    max_q: int | None,
    max_new_tokens: int,
    chat: bool | None,
    seed: int,
) -> ConceptProbes:
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
        shared[key] = (
            base_probes(
                base, questions, unrelated, completions, max_new_tokens=max_new_tokens, chat=chat
            ),
            None,
        )
    return shared[key][0]


def _attacks(
    attacks: Sequence[str],
    shared: dict,
    base: Target,
    u: Model,
    target: Target,
    c: EvalConcept,
    p: ConceptProbes,
    ev: ConceptEval,
    others: list[str],
    *,
    controls: int,
    seed: int,
    max_new_tokens: int,
    relearn_steps: int,
    relearn_lr: float,
) -> list[Recovery]:
    from conceptvec.qa import answer, answer_logprobs, text_scores

    out: list[Recovery] = []
    unl_lp = ev.behaviour["forget"].logprob
    base_lp = p.base["forget"].logprob
    chat = p.prompting == "chat"

    def score(model: Any, attack: str, detail: str) -> Recovery:
        lps = answer_logprobs(model, p.questions, p.references, chat=chat)
        lp = sum(lps) / len(lps)
        ans = answer(model, p.questions, chat=chat, max_new_tokens=max_new_tokens)
        rouge = text_scores(ans, p.references)["rouge_l"]
        return Recovery(
            attack,
            lp,
            _recovered(lp, unl_lp, base_lp),
            detail=detail,
            rouge_l=sum(rouge) / len(rouge),
        )

    if "recovery" in attacks:
        out += recovery(
            base,
            target,
            c.neuron,
            p,
            unl_lp,
            controls=controls,
            seed=seed,
            max_new_tokens=max_new_tokens,
        )
    if "quant4" in attacks:
        with quantized(target.hf) as n:
            q = score(target, "quant4", f"{n} decoder matrices round-tripped through int4")
        key = "quant4:" + json.dumps([p.questions, p.references])
        if key not in shared:  # what 4 bits cost the base itself, once per question set
            with quantized(base.hf):
                lps = answer_logprobs(base, p.questions, p.references, chat=chat)
            shared[key] = (None, sum(lps) / len(lps))
        q.base_logprob = shared[key][1]
        lost = q.base_logprob - unl_lp
        q.recovered_vs_attacked_base = (q.logprob - unl_lp) / lost if lost > 0.01 else None
        q.detail += (
            f"; the base loses {base_lp - q.base_logprob:+.3f} nats/token to the same round trip"
        )
        out.append(q)
    if "relearn" in attacks:
        trained = relearned(
            target.hf, u.tokenizer, others, steps=relearn_steps, lr=relearn_lr, seed=seed
        )
        out.append(
            score(
                resolve(trained, u.tokenizer),
                "relearn",
                f"{relearn_steps} AdamW steps (lr {relearn_lr}) on {len(others)} other concepts' "
                "articles that never name this one",
            )
        )
        del trained
    return out


def score(
    base: Any,
    unlearned: Any,
    concepts: Any,
    *,
    qa: bool = False,
    trace_activations: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Return a plain dict for any harness (TOFU, MUSE, RWKU loops, open-unlearning).

    ``agg_value``: the mean over concepts of the concept vector's change percentile among
    all down columns (0-100; ~50 means moved like a typical column, i.e. not targeted);
    ``value_by_concept``: per concept, the vector's numbers and label; ``report``: the full
    :meth:`EvalReport.to_dict`. Weights only by default (seconds); ``qa=True`` and
    ``trace_activations=True`` add behaviour and the activation trace.
    """
    report = intrinsic(
        base, unlearned, concepts, qa=qa, trace_activations=trace_activations, **options
    )
    run = report.runs[0]
    by: dict[str, dict[str, Any]] = {}
    for c in run.concepts:
        v = c.vector
        by[c.concept] = {
            "neuron": c.neuron,
            "cosine": v.cosine,
            "l2": v.l2,
            "rel_change": v.rel_change,
            "jaccard": v.jaccard,
            "preciser_jaccard": v.preciser_jaccard,
            "related_rate": v.related_rate,
            "change_pct_model": v.change_pct_model,
            "change_pct_layer": v.change_pct_layer,
            "label": c.label,
            "forget_drop": c.drop("forget"),
            "retain_drop": c.drop("retain"),
            **{f"recovered[{r.attack}]": r.recovered for r in c.recovery},
        }
    agg = sum(v["change_pct_model"] for v in by.values()) / len(by)
    return {"agg_value": agg, "value_by_concept": by, "report": report.to_dict()}
