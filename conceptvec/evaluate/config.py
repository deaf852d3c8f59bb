"""``EvalConfig``: every setting of :func:`conceptvec.evaluate.intrinsic` in one object,
recorded in the report as ``settings.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conceptvec.config import Config
from conceptvec.errors import EvaluationError

from .trace import TraceThresholds


@dataclass
class EvalConfig(Config):
    """What an intrinsic evaluation measures and how (defaults: the library's)."""

    error = EvaluationError

    names: list[str] | None = field(
        default=None, metadata={"help": "Only these concepts (by name, in this order)."}
    )
    qa: bool = field(
        default=True, metadata={"help": "Behaviour on the QA probes (attacks need it)."}
    )
    trace_activations: bool = field(
        default=True, metadata={"help": "The activation trace on concept text."}
    )
    attacks: list[str] = field(
        default_factory=list,
        metadata={"help": "Registered attacks to run (conceptvec.evaluate.ATTACKS)."},
    )
    k: int = field(default=200, metadata={"help": "Top-k tokens for the Jaccard overlap."})
    recipe: str = field(
        default="raw", metadata={"help": "raw (W_U v, ConceptVectors) | folded (final norm)."}
    )
    all_jaccard: bool = field(
        default=False, metadata={"help": "Jaccard@k of every down column too."}
    )
    device: str = field(default="cpu", metadata={"help": "Where the weight comparison runs."})
    controls: int = field(default=5, metadata={"help": "Random same-layer control neurons."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens per generated answer."})
    max_questions: int | None = field(
        default=None, metadata={"help": "At most N questions per probe."}
    )
    chat: bool | None = field(
        default=None, metadata={"help": "Chat template for QA (None: when the model has one)."}
    )
    relearn_steps: int = field(default=10, metadata={"help": "AdamW steps of the relearn attack."})
    relearn_lr: float = field(default=2e-5, metadata={"help": "Learning rate of relearn."})
    thresholds: TraceThresholds = field(
        default_factory=TraceThresholds, metadata={"help": "Where the labels change."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of controls, sampling and relearning."})
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Settings of registered attacks and metrics, by their name."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, dict):
            self.thresholds = TraceThresholds(**self.thresholds)
        if isinstance(self.attacks, str):
            self.attacks = [a.strip() for a in self.attacks.split(",") if a.strip()]
        self.attacks = list(self.attacks)
        if self.names is not None:
            self.names = list(self.names)
