"""Settings objects: one dataclass per verb: :class:`UnlearnConfig`, :class:`EvalConfig`,
:class:`FindConfig`.

Each field is documented where it is declared; its ``metadata`` may carry ``help`` (one
line, the CLI's option help). :class:`Config` gives every settings class the same
``to_dict`` / ``from_dict`` and :meth:`Config.build`, which lets a verb accept a config
object, keywords, or a config plus keyword overrides::

    intrinsic(base, unl, concepts, EvalConfig(qa=False))
    intrinsic(base, unl, concepts, qa=False)          # the same
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from conceptvec.errors import (
    ConceptSearchError,
    ConceptvecError,
    EvaluationError,
    UnlearningError,
)

if TYPE_CHECKING:
    from conceptvec.concepts.validate import FindThresholds
    from conceptvec.evaluate.trace import TraceThresholds

C = TypeVar("C", bound="Config")


def _plain(value: object) -> object:
    """Return ``value`` as JSON-ready data (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # a model object, say: recorded by what it prints as


@dataclasses.dataclass
class Config:
    """Base of the settings dataclasses: ``to_dict``, ``from_dict`` and ``build``."""

    error = ConceptvecError
    """The error raised on an unknown setting (a subclass names its own)."""

    def to_dict(self) -> dict[str, object]:
        """Return every field as JSON-ready data (what outputs record as ``config``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Return the config ``data`` describes (a :meth:`to_dict` output); raise on a key
        that is not a field."""
        return cls().replace(**dict(data))

    @classmethod
    def field_names(cls) -> list[str]:
        """Return the names of the settings, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls: type[C], config: C | Mapping[str, Any] | None, **overrides: Any) -> C:
        """Return ``config`` (a config, a dict of settings, or None for the defaults) with
        ``overrides`` applied: how a verb takes a config object or keywords."""
        if config is None:
            base = cls()
        elif isinstance(config, cls):
            base = config
        elif isinstance(config, Mapping):
            base = cls.from_dict(config)
        else:
            raise cls.error(
                f"config must be a {cls.__name__} or a dict of its settings, not "
                f"{type(config).__name__}"
            )
        return base.replace(**overrides) if overrides else base

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes``; raise naming the fields on an unknown key."""
        names = self.field_names()
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise self.error(
                f"{type(self).__name__} has no setting {unknown[0]!r}; its settings: "
                f"{', '.join(names)}"
            )
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------- the verbs' settings
# They live here, with no heavy import, so that the CLI builds its options from them
# without importing torch; the threshold classes load when a config is made.
def _trace_thresholds(**values: Any) -> TraceThresholds:
    from conceptvec.evaluate.trace import TraceThresholds

    return TraceThresholds(**values)


def _find_thresholds(**values: Any) -> FindThresholds:
    from conceptvec.concepts.validate import FindThresholds

    return FindThresholds(**values)


@dataclasses.dataclass
class UnlearnConfig(Config):
    """How a run unlearns (defaults: the library's; None: the method's own)."""

    error = UnlearningError

    method: str = dataclasses.field(
        default="gd", metadata={"help": "A registered unlearning method."}
    )
    hparams: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "The method's hyperparameters (KEY=VALUE)."}
    )
    scope: str | None = dataclasses.field(
        default=None,
        metadata={"help": "full | down | down:A-B | layers:A-B | vector (default: the method's)"},
    )
    neuron: str | None = dataclasses.field(
        default=None, metadata={"help": "The concept vector: L29.1518, 'file' or 'find'."}
    )
    steps: int = dataclasses.field(default=50, metadata={"help": "Training steps."})
    lr: float | None = dataclasses.field(
        default=None, metadata={"help": "Learning rate (default: the method's)."}
    )
    batch_size: int = dataclasses.field(default=4, metadata={"help": "The global batch."})
    seed: int = dataclasses.field(
        default=0, metadata={"help": "Seed of the data order, splits and noise."}
    )
    forget_file: str | None = dataclasses.field(
        default=None, metadata={"help": "More forget data: text lines or JSONL Q/A."}
    )
    retain_file: str | None = dataclasses.field(
        default=None, metadata={"help": "More retain data: text lines or JSONL Q/A."}
    )
    forget_qa: str = dataclasses.field(
        default="heldout", metadata={"help": "Concept QA in training: heldout | all | none."}
    )
    holdout: float = dataclasses.field(
        default=0.5, metadata={"help": "Share of the QA held out of training."}
    )
    max_length: int = dataclasses.field(
        default=512, metadata={"help": "Tokens per training example."}
    )
    weight_decay: float = dataclasses.field(default=0.0, metadata={"help": "AdamW weight decay."})
    save_every: int = dataclasses.field(
        default=0, metadata={"help": "Resumable checkpoint every N steps (0: none)."}
    )
    resume: bool = dataclasses.field(default=False, metadata={"help": "Continue the last run."})
    keep_checkpoints: bool = dataclasses.field(
        default=False, metadata={"help": "Keep the resumable checkpoints after the run."}
    )
    stop_loss: float | None = dataclasses.field(
        default=None, metadata={"help": "Stop once the loss is <= this."}
    )
    evaluate: bool = dataclasses.field(
        default=True, metadata={"help": "Score the held-out QA before and after."}
    )
    chat: bool | None = dataclasses.field(
        default=None, metadata={"help": "Chat template for QA (None: when the model has one)."}
    )
    max_new_tokens: int = dataclasses.field(
        default=32, metadata={"help": "Tokens per generated answer."}
    )
    threads: int | None = dataclasses.field(default=None, metadata={"help": "Torch threads."})
    precision: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "auto | bf16-mixed | fp32: bf16-mixed keeps float32 weights and AdamW and "
            "computes the forward in bf16 (auto: where the CPU/GPU has bf16 matrix units)."
        },
    )

    def __post_init__(self) -> None:
        for name in ("forget_file", "retain_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))  # a path: recorded as text
        self.hparams = dict(self.hparams)


@dataclasses.dataclass
class EvalConfig(Config):
    """What an intrinsic evaluation measures and how (defaults: the library's)."""

    error = EvaluationError

    names: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Only these concepts (by name, in this order)."}
    )
    qa: bool = dataclasses.field(
        default=True, metadata={"help": "Behaviour on the QA probes (attacks need it)."}
    )
    trace_activations: bool = dataclasses.field(
        default=True, metadata={"help": "The activation trace on concept text."}
    )
    attacks: list[str] = dataclasses.field(
        default_factory=list,
        metadata={"help": "Registered attacks to run (conceptvec.evaluate.ATTACKS)."},
    )
    metrics: list[str] = dataclasses.field(
        default_factory=list,
        metadata={"help": "Registered metrics to add per concept (conceptvec.evaluate.METRICS)."},
    )
    k: int = dataclasses.field(
        default=200, metadata={"help": "Top-k tokens for the Jaccard overlap."}
    )
    recipe: str = dataclasses.field(
        default="raw", metadata={"help": "raw (W_U v, ConceptVectors) | folded (final norm)."}
    )
    all_jaccard: bool = dataclasses.field(
        default=False, metadata={"help": "Jaccard@k of every down column too."}
    )
    device: str = dataclasses.field(
        default="cpu", metadata={"help": "Where the weight comparison runs."}
    )
    controls: int = dataclasses.field(
        default=5, metadata={"help": "Random same-layer control neurons."}
    )
    max_new_tokens: int = dataclasses.field(
        default=32, metadata={"help": "Tokens per generated answer."}
    )
    max_questions: int | None = dataclasses.field(
        default=None, metadata={"help": "At most N questions per probe."}
    )
    chat: bool | None = dataclasses.field(
        default=None, metadata={"help": "Chat template for QA (None: when the model has one)."}
    )
    relearn_steps: int = dataclasses.field(
        default=10, metadata={"help": "AdamW steps of the relearn attack."}
    )
    relearn_lr: float = dataclasses.field(
        default=2e-5, metadata={"help": "Learning rate of relearn."}
    )
    relearn_precision: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "Precision of the relearn attacks' training: auto (bf16-mixed where the "
            "CPU or GPU has bf16 matrix units, else fp32), bf16-mixed or fp32."
        },
    )
    thresholds: TraceThresholds = dataclasses.field(
        default_factory=_trace_thresholds, metadata={"help": "Where the labels change."}
    )
    seed: int = dataclasses.field(
        default=0, metadata={"help": "Seed of controls, sampling and relearning."}
    )
    options: dict[str, object] = dataclasses.field(
        default_factory=dict,
        metadata={"help": "Settings of registered attacks and metrics, by their name."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, Mapping):
            self.thresholds = _trace_thresholds(**self.thresholds)
        if isinstance(self.attacks, str):
            self.attacks = [a.strip() for a in self.attacks.split(",") if a.strip()]
        self.attacks = list(self.attacks)
        if isinstance(self.metrics, str):
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]
        self.metrics = list(self.metrics)
        if self.names is not None:
            self.names = list(self.names)


@dataclasses.dataclass
class FindConfig(Config):
    """How the finder ranks, reads and validates candidates (defaults: the library's)."""

    error = ConceptSearchError

    matrix: str = dataclasses.field(default="down", metadata={"help": "up | gate | down"})
    candidates: int = dataclasses.field(
        default=10, metadata={"help": "Neurons ranked from the weights."}
    )
    validate: int = dataclasses.field(
        default=3, metadata={"help": "How many of them get knockouts."}
    )
    controls: int = dataclasses.field(
        default=10, metadata={"help": "Random same-layer control neurons."}
    )
    all_controls: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Score the controls of every knockout; by default only knockouts whose "
            "concept drop reaches min_drop get them (the others cannot count, and their "
            "percentiles read 'not measured')."
        },
    )
    modes: list[str] = dataclasses.field(
        default_factory=lambda: ["zero", "mean", "noise"],  # concepts.validate.MODES
        metadata={
            "help": "Knockout modes, comma-separated: zero, mean (over unrelated text), noise."
        },
    )
    k: int = dataclasses.field(
        default=20, metadata={"help": "Tokens kept per candidate's decoding."}
    )
    max_text_tokens: int = dataclasses.field(
        default=2048, metadata={"help": "Tokens of concept text read for activations."}
    )
    max_new_tokens: int = dataclasses.field(
        default=32, metadata={"help": "Tokens per generated answer."}
    )
    chat: bool | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Ask through the chat template (default: when the model has one) or the "
            "paper's 'Question: ...\\n Answer:' prompt."
        },
    )
    thresholds: FindThresholds = dataclasses.field(
        default_factory=_find_thresholds, metadata={"help": "What the verdict requires."}
    )
    seed: int = dataclasses.field(
        default=0, metadata={"help": "Seed of the controls and the noise."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, Mapping):
            self.thresholds = _find_thresholds(**self.thresholds)
        if isinstance(self.modes, str):
            self.modes = [m.strip() for m in self.modes.split(",") if m.strip()]
        self.modes = list(self.modes)


def help_of(cls: type[Config], name: str) -> str:
    """Return the ``help`` metadata of field ``name`` of ``cls`` ('' when none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)
