"""The output of a run: an HF safetensors folder plus ``unlearning.json``, written atomically.

The folder is assembled under a hidden temporary name beside the target and renamed into
place only when every file is written, so a crash never leaves a folder that looks
complete. ``unlearning.json`` is the last file written inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .methods import UnlearningError

RECORD_FILE = "unlearning.json"
"""The run's record, beside the weights."""
SCHEMA = 1


def check_out(out: Path, overwrite: bool) -> None:
    """Raise unless ``out`` can be written: absent, or ``overwrite`` and a folder."""
    if out.exists() and not overwrite:
        raise UnlearningError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not out.is_dir():
        raise UnlearningError(f"{out} exists and is not a folder; choose another --out")
    if not out.parent.is_dir():
        raise UnlearningError(f"the folder {out.parent} does not exist; create it first")


def write_atomically(out: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run ``write(tmp)`` in a temporary folder beside ``out``, then rename it to ``out``."""
    check_out(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    old = None
    try:
        write(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{tmp.name[-8:]}"
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return out


def save_model(model: Any, tokenizer: Any, folder: Path, record: dict[str, Any]) -> None:
    """Write config, generation config, safetensors weights, tokenizer and the record."""
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_record(folder, record)


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write ``unlearning.json`` (flushed to disk)."""
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    with open(folder / RECORD_FILE, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def fingerprint(model: torch.nn.Module) -> str:
    """Return a sha256 over every tensor's name, shape, dtype, its first and last 4096
    values and its sum (float64): it tells two checkpoints apart without hashing every byte
    of an 8B model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        for part in (flat[:4096], flat[-4096:]):
            h.update(part.float().cpu().numpy().tobytes())
        h.update(repr(float(flat.double().sum())).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- QA scores
def qa_scores(
    model: Any,
    questions: Sequence[str],
    references: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 32,
    chat: bool | None = None,
) -> dict[str, Any]:
    """Return the model's greedy answers and, against ``references`` (default: its own
    answers), the mean teacher-forced log p per answer token, BLEU and ROUGE-L."""
    from ..qa import answer, answer_logprobs, text_scores

    questions = list(questions)
    if not questions:
        return {"questions": [], "answers": [], "references": []}
    answers = answer(model, questions, chat=chat, max_new_tokens=max_new_tokens)
    refs = list(references) if references is not None else answers
    logprob = answer_logprobs(model, questions, refs, chat=chat)
    text = text_scores(answers, refs)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "questions": questions,
        "answers": answers,
        "references": refs,
        "logprob": mean(logprob),
        "bleu": mean(text["bleu"]),
        "rouge_l": mean(text["rouge_l"]),
    }
