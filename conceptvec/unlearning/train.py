"""Training on ``transformers.Trainer``: one subclass whose ``compute_loss`` is the method's.

Using the Trainer means a multi-process run is ``torchrun`` / ``accelerate launch`` with DDP
(gloo on CPU) or FSDP, checkpoints (model, optimizer, scheduler, RNG, step) come from
``save_steps`` and resume from ``resume_from_checkpoint``, and seeding is the Trainer's.
What we add, as callbacks:

- a tqdm bar (main process) with the forget and retain losses of each step;
- early stop when the total loss falls to ``stop_loss`` (ConceptVectors' ``loss_threshold``);
- a per-step loss history, saved into each checkpoint so a resumed run keeps it;
- a non-finite loss stops the run before its gradient is applied (:class:`NonFiniteLoss`).

The data is a :class:`~.data.StepDataset` read sequentially, so the global batch of each
step is fixed by the seed alone, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from conceptvec.errors import UnlearningError

from .methods import Context

HISTORY_FILE = "conceptvec_losses.json"
"""The loss history inside each Trainer checkpoint folder."""
COMPLETE_FILE = "conceptvec-complete.json"
"""Written last into a checkpoint folder: only a folder holding it is resumed from."""

PRECISIONS = ("auto", "bf16-mixed", "fp32")
"""``bf16-mixed``: float32 weights, gradients and AdamW state, the forward (and so the
backward) computed in bf16 under ``torch.autocast``; ``fp32``: float32 throughout; ``auto``:
bf16-mixed where the hardware has bf16 matrix units (:func:`resolve_precision`)."""


def resolve_precision(precision: str, device: str) -> str:
    """Return ``bf16-mixed`` or ``fp32`` for ``precision`` on ``device`` (``cpu``/``cuda``).

    ``auto`` is bf16-mixed on a CUDA device with bf16 support and on a CPU whose flags name
    AVX512-BF16 or AMX-BF16 (measured 1.5-2x faster a step on SmolLM2 with the same log p
    after 25 steps: benchmarks/RESULTS.md, "Training"), fp32 elsewhere, where bf16 matrix
    products are emulated and slower than float32.
    """
    if precision not in PRECISIONS:
        raise UnlearningError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16-mixed" if device == "cpu" and _cpu_has_bf16() else "fp32"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(model: Any, precision: str) -> contextlib.AbstractContextManager:
    """Return the context a step's forward passes run in: ``torch.autocast`` to bf16 on the
    model's device for ``bf16-mixed``, nothing for ``fp32``."""
    if precision != "bf16-mixed":
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


class NonFiniteLoss(RuntimeError):
    """A step's loss was NaN or infinite (raised before its gradient is applied)."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss {value} at step {step}")
        self.step, self.value = step, value


class UnlearnTrainer(Trainer):
    """A Trainer whose loss is an unlearning method's (see :mod:`.methods`)."""

    def __init__(
        self,
        *args,
        context: Context,
        loss_fn,
        frozen_decay: set[str],
        precision: str = "fp32",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.context = context
        self.precision = precision
        self.loss_fn = loss_fn
        self.frozen_decay = frozen_decay
        self.last: dict[str, float] = {}
        # our losses are per-sequence means already: no token-count rescaling by the Trainer
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset or self.train_dataset
        if not isinstance(dataset, Sized):
            raise UnlearningError("the training set has no length; pass a list of examples")
        return torch.utils.data.SequentialSampler(dataset)

    def get_decay_parameter_names(self, model) -> list[str]:
        names = super().get_decay_parameter_names(model)
        return [n for n in names if n not in self.frozen_decay]

    # Trainer passes num_items_in_batch by name; our losses average per batch themselves
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ARG002
        self.context.model = model
        with autocast(model, self.precision):  # the backward runs outside, as torch advises
            out = self.loss_fn(self.context, inputs)
        loss = out["loss"]
        # averaged over ranks first, so that every process sees the same value and stops
        # together when it is not finite
        self.last = _mean_over_ranks({k: v.detach() for k, v in out.items()})
        if not math.isfinite(self.last["loss"]):
            raise NonFiniteLoss(self.state.global_step + 1, self.last["loss"])
        return (loss, None) if return_outputs else loss


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Return the values averaged over all processes (as plain floats)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.stack([values[k].float().reshape(()) for k in keys])
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: float(x) for k, x in zip(keys, t.tolist())}


class Progress(TrainerCallback):
    """Loss history, progress bar, early stop on ``stop_loss``.

    The ``on_*`` methods keep TrainerCallback's signature (``args, state, control, **kwargs``)
    whether or not they use each argument; hence their ``noqa: ARG002``.
    """

    def __init__(self, trainer_ref: list, total: int, show: bool, stop_loss: float | None):
        self.trainer_ref = trainer_ref
        self.total, self.show, self.stop_loss = total, show, stop_loss
        self.history: list[dict[str, float]] = []
        self.bar: Any = None  # a tqdm bar while training, when shown
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ARG002
        if self.show and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=state.global_step, desc="unlearning")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
        last = dict(self.trainer_ref[0].last)
        self.history.append({"step": state.global_step, **last})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in last.items() if k != "loss"})
        if self.stop_loss is not None and last.get("loss", math.inf) <= self.stop_loss:
            self.stopped_early = True
            control.should_training_stop = True
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):  # noqa: ARG002
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / HISTORY_FILE).write_text(json.dumps(self.history))
                mark_complete(folder)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ARG002
        if self.bar is not None:
            self.bar.close()

    def load(self, checkpoint: str | None) -> None:
        """Restore the history saved in ``checkpoint`` (resuming)."""
        if checkpoint and (Path(checkpoint) / HISTORY_FILE).exists():
            self.history = json.loads((Path(checkpoint) / HISTORY_FILE).read_text())


def arguments(
    work_dir: Path,
    *,
    steps: int,
    lr: float,
    per_device_batch: int,
    seed: int,
    save_every: int,
    weight_decay: float,
    find_unused: bool,
    bf16: bool = False,
) -> TrainingArguments:
    """Return the TrainingArguments of a run (AdamW, constant learning rate, no reporting)."""
    import os

    on_gpu = torch.cuda.is_available()
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(work_dir),
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=weight_decay,
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=1,
        seed=seed,
        data_seed=seed,
        save_strategy="steps" if save_every > 0 else "no",
        save_steps=max(save_every, 1),
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        ddp_backend="gloo" if multi and not on_gpu else None,
        ddp_find_unused_parameters=find_unused,
        average_tokens_across_devices=False,
        bf16=bf16,
        max_grad_norm=1.0,
    )


def mark_complete(folder: Path) -> None:
    """Write :data:`COMPLETE_FILE` into a checkpoint folder, synced, after everything else:
    a run killed while saving leaves a folder without it, which is never resumed from."""
    with open(folder / COMPLETE_FILE, "w") as f:
        f.write(json.dumps({"written_by": "conceptvec unlearn"}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def last_checkpoint(work_dir: Path) -> str | None:
    """Return the newest complete ``checkpoint-N`` folder in ``work_dir`` (one that holds
    :data:`COMPLETE_FILE`), or None."""
    if not work_dir.is_dir():
        return None
    steps = {
        int(p.name.removeprefix("checkpoint-")): p
        for p in work_dir.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / COMPLETE_FILE).is_file()
    }
    return str(steps[max(steps)]) if steps else None
