"""Export a concept's QA as lm-evaluation-harness tasks: ``lm_eval --include_path DIR``.

ConceptVectors has no gold answers, so the references are the export model's own greedy
answers (:func:`conceptvec.qa.answer`, as conceptvec's QA evaluation uses them), or gold
answers the user gives. Each question set becomes two tasks:

- ``conceptvec_<concept>_<set>`` (``generate_until``): the model's greedy answer, scored
  with conceptvec's ROUGE-L and sentence BLEU (:func:`conceptvec.qa.text_scores`) and exact
  match (``rouge_l``, ``sentence_bleu``, ``exact_match``);
- ``conceptvec_<concept>_<set>_logprob`` (``loglikelihood``): the reference's mean
  log-probability per token and whether greedy decoding reproduces it. The continuation
  scored is the reference exactly as the export model generated it (its leading space or
  newline kept), so greedy is 1 on that model.

Few-shot is refused in the task config (``num_fewshot: 0``): each prompt is a whole chat
turn, and the only documents are the test questions.

The prompts are stored as the model sees them (chat template applied), so run the tasks
*without* ``--apply_chat_template``; on the export model ROUGE-L is then ~1 by
construction, and an unlearned model's drop is the number conceptvec's QA reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptvec.concepts.benchmark import ConceptEntry, read_concepts
from conceptvec.errors import PluginError, listing
from conceptvec.files import check_name, lists_every_file, swap_folder
from conceptvec.results import Result
from conceptvec.types import ModelSource

if TYPE_CHECKING:
    from conceptvec.models.backends import Target
from conceptvec.version import package_version

SETS: tuple[str, ...] = ("forget_qa", "unrelated_qa", "completion")
"""The question sets: the concept's QA, the unrelated QA, and the text completions."""
MANIFEST = "conceptvec_lm_eval.json"
"""The export's record; an existing folder is replaced only when it holds one."""
SCHEMA = 1

_UTILS = '''"""lm-eval glue for the tasks in this folder (written by conceptvec {version})."""

from pathlib import Path

from conceptvec.plugins import lm_eval_task as _task

FOLDER = Path(__file__).resolve().parent


def load_docs(**kwargs):
    return _task.load_docs(FOLDER, **kwargs)


with_reference = _task.with_reference
score_generation = _task.score_generation
score_logprob = _task.score_logprob
'''

_METRICS = {
    "generate_until": ("rouge_l", "sentence_bleu", "exact_match"),
    "loglikelihood": ("logprob", "greedy"),
}
"""Metric names: ``sentence_bleu`` is the mean sentence BLEU / 100 (not lm-eval's corpus
``bleu``, 0-100); ``exact_match`` compares the stripped texts."""


@dataclass
class LmEvalTask:
    """One exported task."""

    name: str
    set: str
    """``forget_qa``, ``unrelated_qa`` or ``completion``."""
    output_type: str
    """``generate_until`` or ``loglikelihood``."""
    data_file: str
    docs: int
    reference: str
    """``model`` (the export model's greedy answers) or ``gold``."""
    metrics: list[str]


@dataclass
class LmEvalExport(Result):
    """What :func:`export_lm_eval` wrote: the folder, its tasks and how to run them."""

    folder: Path
    concept: str
    model: str
    tag: str
    """lm-eval tag naming every task of this export (``--tasks TAG``)."""
    prompting: str
    """QA prompts: ``chat`` (the chat template, applied here) or ``paper``."""
    dtype: str
    max_new_tokens: int
    tasks: list[LmEvalTask] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Sets left out because the concept has no items in them."""

    @property
    def command(self) -> str:
        """The lm-eval command that runs every task on a model (``MODEL``: an HF folder)."""
        return (
            f"lm_eval --model hf --model_args pretrained=MODEL,dtype={self.dtype} "
            f"--include_path {shlex.quote(str(self.folder))} --tasks {self.tag}"
        )

    def to_dict(self) -> dict[str, object]:
        """Return the JSON record written as :data:`MANIFEST` (field names kept)."""
        out = asdict(self)
        out.update(
            folder=str(self.folder),
            schema=SCHEMA,
            conceptvec=package_version(),
            command=self.command,
        )
        return out

    def __str__(self) -> str:
        lines = [
            f"{self.concept}: {len(self.tasks)} lm-eval tasks in {self.folder} "
            f"(references from {self.model}, {self.prompting} prompts)"
        ]
        lines += [
            f"  {t.name:<48} {t.output_type:<15} {t.docs:>4} docs  {', '.join(t.metrics)}"
            for t in self.tasks
        ]
        if self.skipped:
            lines.append(f"  skipped (no items): {', '.join(self.skipped)}")
        lines.append(f"run: {self.command}")
        return "\n".join(lines)


def export_lm_eval(
    model: ModelSource,
    concepts: str | os.PathLike[str] | list[Any],
    concept: str | None,
    out: str | os.PathLike[str],
    *,
    gold: Mapping[str, str] | str | os.PathLike[str] | None = None,
    sets: Sequence[str] = SETS,
    chat: bool | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    overwrite: bool = False,
) -> LmEvalExport:
    """Return the :class:`LmEvalExport` of ``concept``'s question sets, written to ``out``.

    ``model`` (anything :func:`conceptvec.load` accepts) answers each question greedily to
    make the references, unless ``gold`` (question -> answer, or a JSON/JSONL file of
    ``{"question", "answer"}`` objects) answers every question of a set. ``chat``: prompt
    through the chat template (``None``: when the tokenizer has one) or the paper's
    ``Question: ...\\n Answer:``. ``out`` is written atomically; an existing folder is
    replaced only with ``overwrite`` and only if it is an earlier export.
    """
    from conceptvec.models.backends import resolve
    from conceptvec.qa import use_chat

    out = Path(out).absolute()
    sets = list(dict.fromkeys(sets))
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        raise PluginError(
            f"unknown question set {unknown[0] if unknown else '(none)'}; "
            f"choose from {', '.join(SETS)}"
        )
    if max_new_tokens < 1 or batch_size < 1:
        raise PluginError("max_new_tokens and batch_size must be at least 1")
    _check_replaceable(out, overwrite)
    entry = _pick(read_concepts(concepts), concept)
    answers = _gold(gold)
    target = resolve(model)
    is_chat = use_chat(target, chat)
    slug = task_slug(entry.concept)
    export = LmEvalExport(
        folder=out,
        concept=entry.concept,
        model=target.model.name,
        tag=f"conceptvec_{slug}",
        prompting="chat" if is_chat else "paper",
        dtype=str(next(target.module.parameters()).dtype).removeprefix("torch."),
        max_new_tokens=max_new_tokens,
    )
    files: dict[str, str] = {"utils.py": _UTILS.format(version=package_version())}
    for name in sets:
        docs, kind = _docs(target, entry, name, is_chat, answers, max_new_tokens, batch_size)
        if not docs:
            export.skipped.append(name)
            continue
        data_file = f"{name}.jsonl"
        files[data_file] = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
        scored = sum(1 for d in docs if d["reference"])
        for output_type, suffix, n in (
            ("generate_until", "", len(docs)),
            ("loglikelihood", "_logprob", scored),
        ):
            task = LmEvalTask(
                name=f"{export.tag}_{name}{suffix}",
                set=name,
                output_type=output_type,
                data_file=data_file,
                docs=n,
                reference=kind,
                metrics=list(_METRICS[output_type]),
            )
            if n:
                export.tasks.append(task)
                files[f"{task.name}.yaml"] = _task_yaml(task, export.tag, max_new_tokens)
    if not export.tasks:
        raise PluginError(
            f"concept {entry.concept!r} has no questions in {', '.join(sets)}; choose other sets"
        )
    _write(out, files, export, overwrite)
    return export


# ------------------------------------------------------------------------------ inputs
def task_slug(concept: str) -> str:
    """Return the lm-eval task name part for ``concept``: its ASCII letters and digits
    (accents dropped), at most :data:`SLUG_CHARS` of them, and when anything was dropped
    or cut a short hash of the whole name, so two names never share tasks ("Ελλάδα" and
    "Россия" differ) and a 300-byte name still makes valid file names."""
    ascii_name = unicodedata.normalize("NFKD", concept).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
    if re.fullmatch(r"[A-Za-z0-9 _\-.,'()]*", concept) and slug and len(slug) <= SLUG_CHARS:
        return slug
    digest = hashlib.sha256(concept.encode()).hexdigest()[:8]
    slug = slug[: SLUG_CHARS - 9].rstrip("_")  # a long name is cut: file names hold 255 bytes
    return f"{slug}_{digest}" if slug else f"concept_{digest}"


SLUG_CHARS = 64
"""The longest concept part of a task name (task files are named after tasks)."""


def _pick(entries: list[ConceptEntry], concept: str | None) -> ConceptEntry:
    if concept is None:
        if len(entries) == 1:
            return entries[0]
        raise PluginError(f"the concepts hold {len(entries)} concepts; name one with --concept")
    want = concept.strip().lower()
    for e in entries:
        if e.concept.strip().lower() == want:
            return e
    names = listing([e.concept for e in entries])
    raise PluginError(f"no concept {concept!r} in the concepts; they have {names}")


def _gold(gold: Mapping[str, str] | str | os.PathLike[str] | None) -> dict[str, str]:
    """Return gold answers keyed by the stripped question."""
    if gold is None:
        return {}
    if isinstance(gold, (str, os.PathLike)):
        from conceptvec.unlearning.data import read_pairs

        texts, pairs = read_pairs(gold)
        if texts or not pairs:
            raise PluginError(
                f'{gold}: expected only {{"question": ..., "answer": ...}} objects '
                "(JSON list or JSONL)"
            )
        gold = dict(pairs)
    return {str(q).strip(): str(a).strip() for q, a in gold.items()}


def _docs(
    target: Target,
    entry: ConceptEntry,
    name: str,
    chat: bool,
    gold: dict[str, str],
    max_new_tokens: int,
    batch_size: int,
) -> tuple[list[dict[str, object]], str]:
    """Return one set's documents and where its references came from (model or gold)."""
    from conceptvec.qa import answer, prompt_texts

    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    exact: list[str] | None = None  # the model's answers as generated, the continuations
    if name == "completion":
        questions = [tc.first_half for tc in entry.text_completion]
        prompts, sep, kind = questions, " ", "model"
        exact = answer(target, questions, raw=True, strip=False, **kw) if questions else []
    else:
        raw = entry.qa if name == "forget_qa" else entry.unrelated_qa
        questions = [q.strip() for q in raw]
        prompts, sep = prompt_texts(target, questions, chat), "" if chat else " "
        have = sum(q in gold for q in questions)
        if 0 < have < len(questions):
            raise PluginError(
                f"gold answers cover {have} of the {len(questions)} {name} questions; "
                "give all of them, or none to use the model's own answers"
            )
        kind = "gold" if have else "model"
        if have:
            refs = [gold[q] for q in questions]
        else:
            exact = answer(target, questions, chat=chat, strip=False, **kw) if questions else []
    if exact is not None:  # score exactly what the model produced, not sep + its strip
        refs, continuations = [e.strip() for e in exact], exact
    else:
        continuations = [sep + r for r in refs]
    tok = target.tokenizer
    docs = [
        {
            "question": q,
            "prompt": p,
            "reference": r,
            "continuation": c if r else "",
            "reference_tokens": len(tok(c, add_special_tokens=False)["input_ids"]) if r else 0,
        }
        for q, p, r, c in zip(questions, prompts, refs, continuations)
    ]
    return docs, kind


# ----------------------------------------------------------------------------- writing
def _task_yaml(task: LmEvalTask, tag: str, max_new_tokens: int) -> str:
    """Return one task's YAML (lm-eval's ``!function`` tags point into ``utils.py``)."""
    generate = task.output_type == "generate_until"
    lines = [
        f"# Written by conceptvec {package_version()}: re-export rather than edit.",
        f"task: {task.name}",
        f"tag: {tag}",
        "custom_dataset: !function utils.load_docs",
        "dataset_kwargs:",
        f"  data_file: {task.data_file}",
        "test_split: test",
        "num_fewshot: 0  # lm-eval ignores --num_fewshot: the prompts are whole chat turns",
        f"output_type: {task.output_type}",
        "doc_to_text: prompt",
        f"doc_to_target: {'reference' if generate else 'continuation'}",
    ]
    if generate:
        lines += [
            "generation_kwargs:",
            "  until: []",
            "  do_sample: false",
            f"  max_gen_toks: {max_new_tokens}",
            "process_results: !function utils.score_generation",
        ]
    else:
        lines += [
            'target_delimiter: ""  # the separator is in the continuation already',
            "process_docs: !function utils.with_reference",
            "process_results: !function utils.score_logprob",
        ]
    lines.append("metric_list:")
    for m in task.metrics:
        lines += [f"  - metric: {m}", "    aggregation: mean", "    higher_is_better: true"]
    lines += ["metadata:", f"  version: {SCHEMA}.0"]
    return "\n".join(lines) + "\n"


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Raise unless ``out`` may be written: absent, or an earlier export and ``overwrite``."""
    check_name(out, PluginError, room=len("..writing-12345678"))
    if not out.exists():
        if not out.parent.is_dir():
            raise PluginError(f"the folder {out.parent} does not exist; create it first")
        return
    if not overwrite:
        raise PluginError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if not lists_every_file(out, MANIFEST, lambda r: r.get("schema") == SCHEMA):
        raise PluginError(
            f"{out} exists and is not a conceptvec lm-eval export, or holds files it did not "
            f"write (its {MANIFEST} lists them); it is not ours to replace: choose another --out"
        )


def _write(out: Path, files: dict[str, str], export: LmEvalExport, overwrite: bool) -> None:
    """Write ``files`` and the manifest (last) into a hidden folder beside ``out``, then
    rename it to ``out``: a crash never leaves a folder that looks complete."""
    from conceptvec.files import follow_umask

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    try:
        try:
            follow_umask(tmp)  # as mkdir would (mkdtemp makes 0o700)
            listing = {**export.to_dict(), "files": sorted(files)}
            record = json.dumps(listing, indent=2, ensure_ascii=False) + "\n"
            for name, text in [*files.items(), (MANIFEST, record)]:
                with open(tmp / name, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our temporary folder
            raise
        # checked again right before replacing it
        swap_folder(tmp, out, lambda: _check_replaceable(out, overwrite) if out.exists() else None)
    except OSError as e:
        raise PluginError(f"cannot write {out}: {e.strerror or e}; choose another --out") from None
