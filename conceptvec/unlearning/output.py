"""The output of a run: an HF safetensors folder plus ``unlearning.json``, written atomically.

The folder is assembled under a hidden temporary name beside the target and renamed into
place only when every file is written, so a crash never leaves a folder that looks
complete. ``unlearning.json`` is the last file written inside it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from conceptvec.checkpoint_record import RECORD_FILE, SCHEMA, WRITER, UnlearningRecord
from conceptvec.errors import UnlearningError
from conceptvec.files import (
    check_name,
    follow_umask,
    lists_every_file,
    swap_folder,
    write_failure,
)

WORK_MARK = "conceptvec-unlearn-run.json"
"""The mark inside the hidden ``.<out>.run/`` folder of resumable checkpoints."""
WRITING_MARK = "conceptvec-unlearn-writing.json"
"""The mark inside a ``.<out>.writing-*`` folder while the output is written into it."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def is_output(folder: Path) -> bool:
    """Return whether ``folder`` is an earlier output of ours: its ``unlearning.json`` was
    written by us and lists every file the folder holds (so replacing it loses nothing)."""
    return lists_every_file(
        folder, RECORD_FILE, lambda r: r.get("written_by") == WRITER and r.get("schema") == SCHEMA
    )


def check_out(out: Path, overwrite: bool) -> None:
    """Raise unless ``out`` can be written: absent, or, with ``overwrite``, an empty folder
    or an earlier output of ours (:func:`is_output`). Nothing else is ever replaced."""
    check_name(out, UnlearningError, room=len("..writing-12345678"))  # and .OUT.run
    if not out.parent.is_dir():
        raise UnlearningError(f"the folder {out.parent} does not exist; create it first")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise UnlearningError(
            f"{out} exists; pass --overwrite (overwrite=True) to replace an earlier "
            "unlearning output, or choose another --out"
        )
    if out.is_symlink() or not out.is_dir():
        raise UnlearningError(f"{out} exists and is not a folder; choose another --out")
    if any(out.iterdir()) and not is_output(out):
        raise UnlearningError(
            f"{out} holds files that conceptvec unlearn did not write, and --overwrite "
            "replaces only an earlier unlearning output or an empty folder; choose another "
            "--out, or move those files away yourself"
        )


def write_atomically(out: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run ``write(tmp)`` in a temporary folder beside ``out``, then rename it to ``out``
    (replacing only what :func:`check_out` allows, checked again just before the rename)."""
    check_out(out, overwrite)
    remove_leftovers(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
        try:
            mark_work(tmp, WRITING_MARK)  # so a run killed while writing can tell it is ours
            write(tmp)
            (tmp / WRITING_MARK).unlink()
            follow_umask(tmp)  # as the atlas folders: not mkdtemp's drwx------
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_folder(tmp, out, lambda: check_out(out, overwrite))
    except Exception as e:  # a full disk, a read-only folder: the temporary folder is gone
        reason = write_failure(e)
        if reason is None:
            raise
        raise UnlearningError(
            f"cannot write {out} ({reason}); nothing was written there: free space or "
            "choose another --out"
        ) from None
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return out


def work_dir(out: Path) -> Path:
    """Return the hidden folder beside ``out`` that holds a run's resumable checkpoints."""
    return out.parent / f".{out.name}.run"


def check_work(work: Path, *, resume: bool, overwrite: bool) -> None:
    """Raise unless :func:`claim_work` may proceed: ``work`` is absent, or ours and either
    ``resume`` (continue it) or ``overwrite`` (start over)."""
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise UnlearningError(f"{work} exists and is not a folder; move it away")
    if not work.exists():
        return
    if not _is_work(work):
        raise UnlearningError(
            f"{work} exists and was not made by conceptvec unlearn (it is where resumable "
            "checkpoints go); move it away or choose another --out"
        )
    if not (resume or overwrite):
        raise UnlearningError(
            f"{work} holds an interrupted run; pass --resume to continue it or --overwrite "
            "to start over"
        )


def claim_work(work: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``work`` ours: keep it when it is ours and ``resume``, clear it when it is ours
    and ``overwrite``, create it with our mark when absent. A folder without our mark is
    never used or removed."""
    check_work(work, resume=resume, overwrite=overwrite)
    if work.exists() and resume:
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    mark_work(work)


def mark_work(work: Path, name: str = WORK_MARK) -> None:
    """Write our mark ``name`` into ``work``, a folder we have just created."""
    (work / name).write_text(json.dumps({"written_by": WRITER, "schema": SCHEMA}) + "\n")


def remove_leftovers(out: Path) -> list[Path]:
    """Delete the ``.<out>.writing-*`` folders a killed run left beside ``out``: only those
    that carry our :data:`WRITING_MARK` (a folder of that name without it is not ours)."""
    removed = []
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.writing-*"):
        if _is_work(tmp, WRITING_MARK):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def remove_work(work: Path) -> None:
    """Delete ``work`` if it carries our mark (and only then)."""
    if _is_work(work):
        shutil.rmtree(work, ignore_errors=True)


def _is_work(work: Path, name: str = WORK_MARK) -> bool:
    mark = _read_json(work / name)
    return (
        work.is_dir()
        and not work.is_symlink()
        and isinstance(mark, dict)
        and (mark.get("written_by") == WRITER)
    )


def save_model(
    model: Any,
    tokenizer: Any,
    folder: Path,
    record: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write config, generation config, safetensors weights (``state_dict`` when given:
    the full weights gathered from a sharded run), tokenizer, then the record, which gains
    ``written_by`` and ``files`` (everything in the folder)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    record["written_by"] = WRITER
    record["files"] = sorted({p.name for p in folder.iterdir()} - {WRITING_MARK} | {RECORD_FILE})
    write_record(folder, record)


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write ``unlearning.json`` (flushed to disk) through :class:`UnlearningRecord`, the
    one format its readers share."""
    UnlearningRecord.from_dict(record).write(folder)


def fingerprint(model: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """Return a sha256 over every tensor's name, shape, dtype, its first and last 4096
    values and its sum (float64) of a model or state dict: it tells two checkpoints apart
    without hashing every byte of an 8B model."""
    h = hashlib.sha256()
    state = model if isinstance(model, dict) else model.state_dict()
    for name, t in sorted(state.items()):
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
    from conceptvec.qa import answer, answer_logprobs, text_scores

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
