"""``unlearning.json``: the record beside an unlearned checkpoint, one dataclass for the
writer (:mod:`conceptvec.unlearning.output`) and every reader (:mod:`conceptvec.evaluate`).

It lives below both packages so that ``evaluate`` never imports ``unlearning``: it reads
any checkpoint's record, whoever wrote it. :meth:`UnlearningRecord.from_dict` reads every
format written so far (schema 1, before and after the ``config`` entry; a bare concept name
in place of the ``concept`` object) and keeps keys it does not know in ``extra``, so a
record read and written again loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptvec.errors import ConceptvecError
from conceptvec.files import read_json

RECORD_FILE = "unlearning.json"
"""The run's record, beside the weights."""
SCHEMA = 1
WRITER = "conceptvec unlearn"
"""``written_by`` in every record: what makes a folder ours to replace."""


@dataclass
class UnlearningRecord:
    """What an unlearning run did and how; every field is optional on reading."""

    schema: int = SCHEMA
    method: str = ""
    paper: str = ""
    hyperparameters: dict[str, object] = field(default_factory=dict)
    """The method's hyperparameters as the run used them (defaults filled in)."""
    lr: float | None = None
    optimizer: str = ""
    weight_decay: float = 0.0
    steps: int = 0
    """Steps asked for (``steps_done`` says how many ran)."""
    batch_size: int = 0
    """The global batch."""
    world_size: int = 1
    seed: int = 0
    scope: str = ""
    """Which parameters trained: ``full``, ``down:A-B``, ``vector``, ..."""
    concept: dict[str, object] = field(default_factory=dict)
    """``{"name", "source"}``: the concept unlearned and where its entry came from."""
    neuron: str | None = None
    """The concept vector (``L29.1518``) when the method or scope used one."""
    base_model: dict[str, object] = field(default_factory=dict)
    """``{"name", "location", "fingerprint"}`` of the model before unlearning."""
    threads: int | None = None
    precision: str | None = None
    """``bf16-mixed`` or ``fp32`` (see :mod:`conceptvec.unlearning.train`)."""
    versions: dict[str, str] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    trainable_parameters: int | None = None
    data: dict[str, object] = field(default_factory=dict)
    """What was trained on and held out (``heldout_qa``, ``heldout_unrelated_qa``, ...)."""
    steps_done: int = 0
    stopped_early: bool = False
    resumed_from: str | None = None
    final_losses: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, object]] = field(default_factory=list)
    wall_seconds: float = 0.0
    fingerprint: str | None = None
    """Of the weights written (see :func:`conceptvec.unlearning.output.fingerprint`)."""
    dtype: str = ""
    evaluation: dict[str, object] | None = None
    """Held-out forget and unrelated QA before and after, when the run scored them."""
    peak_gpu_bytes: int | None = None
    config: dict[str, object] = field(default_factory=dict)
    """The run's full settings (``UnlearnConfig.to_dict()``)."""
    written_by: str | None = None
    files: list[str] | None = None
    """Every file of the output folder (what ``--overwrite`` may replace)."""
    extra: dict[str, object] = field(default_factory=dict)
    """Keys this version does not know (written back as they were)."""

    @property
    def concept_name(self) -> str:
        """The unlearned concept's name ('' when unknown)."""
        return str(self.concept.get("name", "") or "")

    def heldout(self) -> tuple[list[str], list[str]]:
        """Return the (concept, unrelated) questions the run held out of training."""
        held = self.data.get("heldout_qa")
        unrelated = self.data.get("heldout_unrelated_qa")
        keep = lambda xs: [q for q in xs if isinstance(q, str)] if isinstance(xs, list) else []  # noqa: E731
        return keep(held), keep(unrelated)

    def to_dict(self) -> dict[str, object]:
        """Return the JSON object of ``unlearning.json`` (unset optional keys left out)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlearningRecord:
        """Return the record ``data`` holds, of any format written so far."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        if "concept" in values and not isinstance(values["concept"], dict):
            values["concept"] = {"name": str(values["concept"] or "")}
        for key in ("data", "hyperparameters", "base_model", "versions", "final_losses"):
            if key in values and not isinstance(values[key], dict):
                values[key] = {}
        if "config" in values and not isinstance(values["config"], dict):
            values["config"] = {}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> UnlearningRecord | None:
        """Return the record in ``folder``, or None when it has none, or none that is a
        readable JSON object (read within the size limit of :func:`conceptvec.files.read_json`)."""
        path = Path(folder) / RECORD_FILE
        if not path.is_file():
            return None
        try:
            data = read_json(path, ConceptvecError, "the unlearning record")
        except ConceptvecError:
            return None
        return cls.from_dict(data) if isinstance(data, dict) else None

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``unlearning.json`` into ``folder`` (flushed to disk); return its path."""
        path = Path(folder) / RECORD_FILE
        text = json.dumps(
            self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False, default=str
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        return path


_OPTIONAL = {"evaluation", "peak_gpu_bytes", "written_by", "files", "precision"}
"""Keys written only when set (a record without QA has no ``evaluation``)."""
