"""``unlearn``: make an unlearned checkpoint of a model for a concept, the way papers do.

::

    result = conceptvec.unlearn("smollm2-135m", "Ancient Rome", method="npo",
                                concepts="concepts.json", out="rome-npo", steps=50)
    result.record["evaluation"]["forget_qa"]["after"]["rouge_l"]
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptvec import limits
from conceptvec.checkpoint_record import UnlearningRecord
from conceptvec.config import UnlearnConfig
from conceptvec.distributed import is_main_process
from conceptvec.errors import UnlearningError
from conceptvec.files import check_writable, write_failure
from conceptvec.neurons import NeuronId
from conceptvec.results import Result

from .data import StepDataset, collate
from .inputs import (
    build_sets,
    check_inputs,
    resolve_concept,
    resolve_neuron,
    trainable_module,
)
from .methods import METHODS, Context, resolve_hparams
from .methods import method as get_method
from .output import (
    SCHEMA,
    check_out,
    check_work,
    fingerprint,
    qa_scores,
    save_model,
    work_dir,
    write_atomically,
)
from .scope import Scope, apply_scope, column_weight, parse_scope, trainable_values

DEFAULT_THREADS = 1
"""Torch threads for training when ``threads`` is not given and the cores are busy with
other jobs (:func:`default_threads`): on this project's loaded 2-core machine one thread
ran a training step faster than two (see docs/unlearning.md)."""


def default_threads(sample: float = 0.1) -> int:
    """Return the torch threads a run uses when ``threads`` is not given: torch's own count
    (every core, or ``OMP_NUM_THREADS``) less the cores other processes kept busy over the
    last ``sample`` seconds (``/proc/stat``), at least :data:`DEFAULT_THREADS`.

    Measured on the 2-core VM (benchmarks/RESULTS.md, "Training"): idle, two threads ran a
    bf16-mixed GD step of SmolLM2 2.4x faster than one; beside other jobs, one thread beat
    two (docs/unlearning.md, "Threads"). Where ``/proc/stat`` cannot be read, torch's count.
    """
    threads = torch.get_num_threads()
    before = _cpu_busy()
    if threads <= DEFAULT_THREADS or before is None:
        return threads
    time.sleep(sample)
    after = _cpu_busy()
    if after is None:
        return threads
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = ((after[0] - before[0]) - (after[1] - before[1])) / ticks / sample
    return max(DEFAULT_THREADS, min(threads, round((os.cpu_count() or 1) - max(others, 0.0))))


def _cpu_busy() -> tuple[int, int] | None:
    """Return (busy clock ticks of all CPUs, busy ticks of this process), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime


logger = logging.getLogger(__name__)


@dataclass
class UnlearnResult(Result):
    """What :func:`unlearn` made: the trained model, where it was written, and its record."""

    model: Any
    """The unlearned ``transformers`` model (in memory)."""
    out: Path | None
    """The checkpoint folder, or None when nothing was written."""
    record: dict[str, Any] = field(default_factory=dict)
    """Everything ``unlearning.json`` holds."""

    @property
    def run_record(self) -> UnlearningRecord:
        """The record as the :class:`UnlearningRecord` that ``unlearning.json`` holds."""
        return UnlearningRecord.from_dict(self.record)

    @property
    def losses(self) -> dict[str, float]:
        """The final step's losses (``loss``, ``forget``, ``retain``)."""
        return self.record.get("final_losses", {})

    def to_dict(self) -> dict[str, Any]:
        """Return the record with the output folder (JSON-ready)."""
        return {"out": str(self.out) if self.out else None, **self.record}

    def __str__(self) -> str:
        r = self.record
        lines = [
            f"{r['method']} on {r['concept']['name']!r}, scope {r['scope']}: "
            f"{r['steps_done']} steps in {r['wall_seconds']:.1f} s",
            "  final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in self.losses.items()),
        ]
        for part, ev in r.get("evaluation", {}).items():
            b, a = ev["before"], ev["after"]
            lines.append(
                f"  {part} (held out, {len(b['questions'])} q): log p {b['logprob']:.3f} -> "
                f"{a['logprob']:.3f}, ROUGE-L vs base {a['rouge_l']:.3f}"
            )
        if self.out:
            lines.append(f"  wrote {self.out}")
        return "\n".join(lines)


def _check_numbers(
    lr: float, steps: int, batch_size: int, world: int, threads: int | None = None
) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise UnlearningError(f"lr must be a finite number >= 0, not {lr!r}")
    if not isinstance(steps, int) or not 1 <= steps <= limits.STEPS:
        raise UnlearningError(
            f"steps must be a whole number from 1 to {limits.STEPS:,}, not {steps!r}"
        )
    if batch_size < 1 or batch_size % world:
        raise UnlearningError(
            f"batch size {batch_size} must be >= 1 and divisible by the {world} processes"
        )
    if steps * batch_size > limits.SCHEDULE_ROWS:
        raise UnlearningError(
            f"{steps:,} steps of {batch_size} samples is over the {limits.SCHEDULE_ROWS:,} "
            "samples one run schedules; lower --steps or --batch-size"
        )
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= max(cores, 64):
        raise UnlearningError(
            f"--threads {threads}: this machine has {cores} cores; pass at most {max(cores, 64)}"
        )


def unlearn(
    model: Any,
    concept: Any,
    method: str | None = None,
    config: UnlearnConfig | Mapping[str, Any] | None = None,
    *,
    concepts: Any = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> UnlearnResult:
    """Return an :class:`UnlearnResult`: ``model`` unlearned of ``concept`` by ``method``.

    ``config`` is an :class:`UnlearnConfig` (or its dict); ``settings`` are its fields as
    keywords (``steps=20``), applied on top, and any other keyword is a hyperparameter of
    the method (``beta=0.2``); ``method``, when given, overrides the config's. The record
    (``unlearning.json``) holds the whole config as ``config``.

    ``concept`` is a name (looked up in ``concepts``, a ConceptVectors file or list of
    entries; the other concepts there become retain text), a one-concept ConceptVectors
    file, a ``ConceptEntry`` or a ``ConceptVector``. ``method`` is one of :data:`METHODS`;
    ``hparams`` its hyperparameters (see each loss's docstring). ``scope``: ``full``,
    ``down``, ``down:A-B``, ``layers:A-B`` or ``vector`` (the method's default when None).
    ``neuron`` names the concept vector (``"L29.1518"``, ``"file"``, ``"find"``) for
    ``needle``, ``edit`` and the vector scope. Training is AdamW with a constant ``lr``,
    ``steps`` steps of ``batch_size`` (the global batch), seeded. ``out`` receives an HF
    checkpoint and ``unlearning.json``, atomically; ``save_every`` > 0 keeps resumable
    checkpoints beside it (``resume=True`` continues from the newest). ``evaluate`` scores
    the held-out forget and unrelated QA before and after.

    Under ``torchrun`` / ``accelerate launch`` every process trains and only the main one
    writes ``out``, with the full weights gathered from all of them (FSDP, DeepSpeed). In a
    sharded run the returned model is this process's shard, and ``evaluate`` must be False.
    """
    fields = set(UnlearnConfig.field_names())
    hparams = {k: v for k, v in settings.items() if k not in fields}
    cfg = UnlearnConfig.build(config, **{k: v for k, v in settings.items() if k in fields})
    if method is not None:
        cfg = cfg.replace(method=method)
    if hparams:
        cfg = cfg.replace(hparams={**cfg.hparams, **hparams})
    method, scope, neuron, steps, lr = cfg.method, cfg.scope, cfg.neuron, cfg.steps, cfg.lr
    batch_size, seed, forget_qa, holdout = cfg.batch_size, cfg.seed, cfg.forget_qa, cfg.holdout
    forget_file, retain_file, max_length = cfg.forget_file, cfg.retain_file, cfg.max_length
    weight_decay, save_every, resume = cfg.weight_decay, cfg.save_every, cfg.resume
    keep_checkpoints, stop_loss, evaluate = cfg.keep_checkpoints, cfg.stop_loss, cfg.evaluate
    chat, max_new_tokens, threads, hparams = cfg.chat, cfg.max_new_tokens, cfg.threads, cfg.hparams
    precision = cfg.precision
    from conceptvec.models.backends import resolve

    from .train import resolve_precision

    m = get_method(method)
    precision = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lr = m.lr if lr is None else lr
    _check_numbers(lr, steps, batch_size, world, threads)
    if evaluate and m.name != "edit" and _sharded_launch():
        raise UnlearningError(
            "the QA evaluation needs the whole model in one process, and this launch shards "
            "it (FSDP or DeepSpeed); pass --no-eval (evaluate=False) and score the output "
            "folder in one process"
        )
    h = resolve_hparams(m, hparams)
    loss_method = METHODS[h["base_method"]] if m.name == "needle" else m
    if m.name == "needle":  # Needle trains with its base method's loss and defaults
        h = {**loss_method.defaults, **h}
    out = Path(out) if out is not None else None
    if out is not None:
        check_out(out, overwrite)
        if is_main_process():
            check_writable(out.parent, UnlearningError, "choose another --out or free space")
        if m.name != "edit" and is_main_process():
            check_work(work_dir(out), resume=resume, overwrite=overwrite)
    entry, others, source, found = resolve_concept(concept, concepts)
    check_inputs(m, neuron, entry, found, forget_file)  # before the model loads
    base, hf, tok = trainable_module(model)
    n_layers = base.dims.n_layers
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        target = resolve(hf, tok)

        def find():
            from conceptvec.concepts import find_concept

            texts = [entry.wikipedia_content] if entry.wikipedia_content else []
            search = find_concept(
                target, entry.concept, texts=texts, qa=entry.qa, progress=progress
            )
            best = (search.validated or search.candidates)[0]
            return NeuronId.parse(best.neuron)

        vec = resolve_neuron(neuron, entry, found, find)
        if vec is not None:
            vec.check(n_layers, base.dims.d_mlp)
        if m.vector and vec is None:
            raise UnlearningError(
                f"method {m.name} needs the concept vector: pass neuron='L29.1518' (--neuron), "
                "'find' to run the finder, or 'file' for the record's Layer/Dim"
            )
        if m.name == "rmu":
            h["layer"] = round(7 / 32 * n_layers) if h["layer"] is None else int(h["layer"])
            if not 0 <= h["layer"] < n_layers:
                raise UnlearningError(f"rmu: layer {h['layer']} is outside 0..{n_layers - 1}")
        scope_text = scope or m.scope
        if scope_text == "rmu":
            scope_text = f"down:{max(0, h['layer'] - 2)}-{h['layer']}"
        sc = parse_scope(scope_text, n_layers, vec)
        t0 = time.time()
        base_print = fingerprint(hf)
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "method": m.name,
            "paper": m.paper,
            "hyperparameters": h,
            "lr": lr,
            "optimizer": "AdamW, constant lr, grad-norm clip 1.0",
            "weight_decay": weight_decay,
            "steps": steps,
            "batch_size": batch_size,
            "world_size": world,
            "seed": seed,
            "scope": str(sc),
            "concept": {"name": entry.concept, "source": source},
            "neuron": str(vec) if vec is not None else None,
            "base_model": {"name": base.name, "location": base.location, "fingerprint": base_print},
            "threads": torch.get_num_threads(),
            "precision": precision,
            "versions": {"torch": torch.__version__, "transformers": _tf_version()},
            "config": cfg.to_dict(),
        }
        if m.name == "edit":
            sets = state = None
            history, stopped, resumed = [], False, None
            heldout = (
                [q.strip() for q in entry.qa if q.strip()],
                [q.strip() for q in entry.unrelated_qa if q.strip()],
            )
            before = _evaluate(target, heldout, None, evaluate, chat, max_new_tokens)
            with torch.no_grad():
                w = column_weight(hf, base.spec, vec)
                w[:, vec.index] = 0 if h["mode"] == "zero" else -w[:, vec.index]
            record.update(trainable=[f"{vec} (down column)"], data={"qa_split": "all"})
        else:
            rows = steps * batch_size
            sets = build_sets(
                target, entry, others, forget_file=forget_file, retain_file=retain_file,
                forget_qa=forget_qa, holdout=holdout, seed=seed, max_length=max_length,
                rows=rows, dpo=loss_method.idk, chat=chat, max_new_tokens=max_new_tokens,
            )  # fmt: skip
            if loss_method.needs_retain(h) and not sets.retain:
                raise UnlearningError(
                    f"method {m.name} needs a retain set and none was found: pass a concepts "
                    "file with other concepts (--concepts), a retain file (--retain FILE), "
                    f"or set its {loss_method.retain_key} to 0"
                )
            heldout = (sets.heldout, sets.heldout_unrelated)
            before = _evaluate(target, heldout, None, evaluate, chat, max_new_tokens)
            history, stopped, resumed, state = _train(
                hf, tok, base, m, loss_method, h, sc, sets, record, out, neuron=vec,
                lr=lr, steps=steps, batch_size=batch_size, world=world, seed=seed,
                weight_decay=weight_decay, save_every=save_every, resume=resume,
                keep=keep_checkpoints, stop_loss=stop_loss, progress=progress, overwrite=overwrite,
                precision=precision,
            )  # fmt: skip
            record["data"] = asdict(sets.spec)
        hf.eval()
        after = _evaluate(target, heldout, before, evaluate, chat, max_new_tokens)
        record.update(
            steps_done=history[-1]["step"] if history else 0,
            stopped_early=stopped,
            resumed_from=resumed,
            final_losses={k: v for k, v in (history[-1] if history else {}).items() if k != "step"},
            history=history,
            wall_seconds=time.time() - t0,
            fingerprint=fingerprint(hf if state is None else state) if state != {} else None,
            dtype=str(next(hf.parameters()).dtype).replace("torch.", ""),
        )
        if torch.cuda.is_available():
            record["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        if after is not None:
            record["evaluation"] = after
        main = is_main_process()
        if out is not None and main:
            write_atomically(out, lambda tmp: save_model(hf, tok, tmp, record, state), overwrite)
        return UnlearnResult(hf, out, record)
    finally:
        torch.set_num_threads(old_threads)


def _sharded_launch() -> bool:
    """Return whether ``accelerate launch`` asked for FSDP or DeepSpeed (its environment)."""
    return any(
        os.environ.get(f"ACCELERATE_USE_{k}", "false").lower() in ("true", "1")
        for k in ("FSDP", "DEEPSPEED")
    )


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def _evaluate(target, heldout, before, evaluate: bool, chat, max_new_tokens):
    """Before training: the base answers; after: scores against them (or None)."""
    if not evaluate:
        return None
    when = "before" if before is None else "after"
    logger.info("held-out QA %s unlearning: %d + %d questions", when, *map(len, heldout))
    was_training = target.hf.training
    target.hf.eval()
    try:
        names = ("forget_qa", "retain_qa")
        if before is None:
            return {
                n: qa_scores(target, qs, None, chat=chat, max_new_tokens=max_new_tokens)
                for n, qs in zip(names, heldout)
            }
        return {
            n: {"before": before[n], "after": qa_scores(target, before[n]["questions"], before[n]["answers"], chat=chat, max_new_tokens=max_new_tokens)}
            for n in names
        }  # fmt: skip
    finally:
        target.hf.train(was_training)


def _train(
    hf, tok, base, m, loss_method, h, sc: Scope, sets, record, out, *, neuron: NeuronId | None, **kw
):
    """Run the Trainer; return (history, stopped early, resumed-from checkpoint, the trained
    weights gathered by the Trainer's accelerator: complete on the main process, ``{}`` on
    the others in a sharded run)."""
    from .output import claim_work, mark_work, remove_work
    from .train import NonFiniteLoss, Progress, UnlearnTrainer, arguments, last_checkpoint

    spec = base.spec
    names = apply_scope(hf, sc, spec)
    record["trainable"] = names if len(names) <= 12 else names[:6] + ["…"] + names[-6:]
    record["trainable_parameters"] = trainable_values(hf, sc, spec)
    ref = None
    if loss_method.reference or m.name == "rmu":
        ref = copy.deepcopy(hf).eval()
        ref.requires_grad_(False)
    if m.name == "needle":
        assert neuron is not None  # needle is a vector method: unlearn() checked it
        with torch.no_grad():
            w = column_weight(hf, spec, neuron)
            g = torch.Generator().manual_seed(kw["seed"])
            noise = torch.randn(w.shape[0], generator=g) * h["sigma"]
            w[:, neuron.index] += noise.to(w.device, w.dtype)
    ctx = Context(
        model=hf, ref=ref, hparams=h, layers=_layers(hf, spec), ref_layers=_layers(ref, spec)
    )
    if m.name == "rmu":
        ctx.control = _control(hf, ref, ctx, sets, h, kw["seed"], tok)
    world = kw["world"]
    main = is_main_process()
    if out is not None:
        work = work_dir(out)
        if main:
            claim_work(work, resume=kw["resume"], overwrite=kw["overwrite"])
    else:
        work = Path(tempfile.mkdtemp(prefix="conceptvec-unlearn-"))
        mark_work(work)
    resumed = last_checkpoint(work) if kw["resume"] else None
    args = arguments(
        work, steps=kw["steps"], lr=kw["lr"], per_device_batch=kw["batch_size"] // world,
        seed=kw["seed"], save_every=kw["save_every"], weight_decay=kw["weight_decay"],
        find_unused=m.name == "rmu" or sc.kind != "full",
    )  # fmt: skip
    data = StepDataset(
        sets.forget, sets.retain, kw["steps"] * kw["batch_size"], kw["seed"], sets.idk
    )
    frozen_decay = {n for n in names if sc.kind == "vector"}
    holder: list = []
    prog = Progress(holder, kw["steps"], kw["progress"], kw["stop_loss"])
    prog.load(resumed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    trainer = UnlearnTrainer(
        model=hf, args=args, train_dataset=data, data_collator=collate(pad), callbacks=[prog],
        context=ctx, loss_fn=loss_method.loss, frozen_decay=frozen_decay,
        precision=kw["precision"],
    )  # fmt: skip
    holder.append(trainer)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints a metrics dict to stdout
    try:
        trainer.train(resume_from_checkpoint=resumed)
    except NonFiniteLoss as e:
        good = last_checkpoint(work)
        if good is None and main:
            remove_work(work)  # nothing to resume: an empty work folder would block a retry
        kept = (
            f"the last good checkpoint is {good}"
            if good
            else "no checkpoint was saved (use --save-every)"
        )
        raise UnlearningError(
            f"the {m.name} loss became {e.value} at step {e.step}; stopped, nothing written to "
            f"{out or 'an output folder'}; {kept}; lower --lr"
        ) from None
    except Exception as e:  # a checkpoint could not be written (a full disk)
        reason = write_failure(e)
        if reason is None:
            raise
        good = last_checkpoint(work)
        if good is None and main:
            remove_work(work)
        raise UnlearningError(
            f"cannot write a checkpoint in {work} ({reason}); stopped, nothing written to "
            f"{out or 'an output folder'}; free space, then run again"
            + (" with --resume" if good else "")
        ) from None
    # every process joins the gather (FSDP, DeepSpeed ZeRO-3); unwrapped as is otherwise
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if main and not kw["keep"]:
        remove_work(work)
    hf.requires_grad_(True)
    return prog.history, prog.stopped_early, resumed, state


def _layers(model, spec):
    if model is None:
        return None
    module = model
    for part in spec.layers_module.split("."):
        module = getattr(module, part)
    return module


def _control(hf, ref, ctx, sets, h, seed, tok) -> torch.Tensor:
    """Return RMU's ``c·u``: u uniform on [0,1)^d normalised, c = ``steering_coeff`` or
    ``steering_scale`` × the mean residual norm at the layer on forget text (frozen model)."""
    from .data import _pad
    from .methods import layer_output

    d = hf.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(d, generator=g)
    u = u / u.norm()
    c = h["steering_coeff"]
    if c is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        batch = _pad(sets.forget[:8], pad)
        batch = {k: v.to(next(ref.parameters()).device) for k, v in batch.items()}
        with torch.no_grad():
            acts = layer_output(ref, ctx.ref_layers, h["layer"], batch).float()
        mask = batch["attention_mask"].bool()
        c = h["steering_scale"] * float(acts.norm(dim=-1)[mask].mean())
        h["steering_coeff"] = c
    return (c * u)[None, None, :]
