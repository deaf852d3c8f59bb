"""Forget and retain data: a concept's text and QA, tokenised into training examples.

- **Text** is chunked as ConceptVectors does (``data_module.split_paragraph``): split into
  sentences after ``.`` or ``?``, then join sentences until a chunk passes 400 characters.
  Each chunk is one example, truncated to ``max_length`` tokens, with a loss on every token
  after the first and on an appended end-of-sequence token.
- **QA** has questions only (ConceptVectors ships no gold answers), so an example's answer
  is the *base model's own greedy answer*, with the loss on the answer tokens. Questions
  are split once, seeded: a held-out part for evaluation and a training part; which
  questions went where is recorded.
- **User files**: text lines (one example per non-blank line, or per paragraph of a
  ``.txt`` with blank lines) or JSONL of ``{"question": ..., "answer": ...}``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptvec import limits
from conceptvec.errors import UnlearningError
from conceptvec.files import read_bounded

CHUNK_CHARS = 400
"""A chunk closes once it is longer than this many characters (ConceptVectors)."""
_SENTENCE_END = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)(\s)")

IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea about that.",
    "I can't answer that.",
    "I don't have that information.",
    "That's not something I know about.",
    "I'm unable to answer that question.",
    "Sorry, I don't know the answer.",
)
"""The preferred answers of the DPO method (TOFU's ``idontknow`` style)."""


def chunk_text(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Return ``text`` cut into chunks of whole sentences, each closed past ``limit`` chars.

    >>> chunk_text("One. Two? Three.", limit=4)
    ['One. Two?', 'Three.']
    """
    chunks, current = [], ""
    parts = _SENTENCE_END.split(text)  # sentence, the space after it, sentence, ...
    for sentence, space in zip(parts[::2], [*parts[1::2], ""]):
        current += sentence
        if len(current) > limit:
            chunks.append(current.strip())
            current = ""
        else:
            current += space
    if current.strip():
        chunks.append(current.strip())
    return [c for c in chunks if c]


@dataclass
class Example:
    """One training sequence: ``prompt`` tokens (no loss) then ``answer`` tokens (loss)."""

    prompt: list[int]
    answer: list[int]
    kind: str
    """``text`` or ``qa``."""


@dataclass
class DataSpec:
    """What a run trains on, as recorded in ``unlearning.json``."""

    forget_text: int = 0
    forget_qa: list[str] = field(default_factory=list)
    retain_text: int = 0
    retain_qa: list[str] = field(default_factory=list)
    heldout_qa: list[str] = field(default_factory=list)
    """Concept questions kept out of training (the forget-QA evaluation split)."""
    heldout_unrelated_qa: list[str] = field(default_factory=list)
    """Unrelated questions kept out of training (the retain-QA evaluation split)."""
    qa_split: str = "heldout"
    sources: list[str] = field(default_factory=list)


def split_questions(questions: Sequence[str], holdout: float, seed: int) -> tuple[list, list]:
    """Return (train, held-out) questions: a seeded shuffle, ``holdout`` of them held out
    (at least one when there are two or more)."""
    qs = [q.strip() for q in questions if q.strip()]
    if not 0 <= holdout <= 1:
        raise UnlearningError(f"holdout must be within [0, 1], not {holdout}")
    order = list(range(len(qs)))
    random.Random(seed).shuffle(order)
    n_out = round(len(qs) * holdout)
    if holdout > 0 and len(qs) >= 2:
        n_out = min(max(n_out, 1), len(qs) - 1)
    held = sorted(order[:n_out])
    train = sorted(order[n_out:])
    return [qs[i] for i in train], [qs[i] for i in held]


def read_pairs(path: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Return (texts, (question, answer) pairs) from a user forget/retain file.

    ``.jsonl``: one object per line with ``question`` and ``answer`` (or ``text``).
    ``.json``: a list of strings or of such objects. Anything else: text, one example per
    paragraph when the file has blank lines, else one per non-blank line.
    """
    p = Path(path)
    raw = read_bounded(p, UnlearningError, "pass a text or JSONL file", 256 << 20)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnlearningError(f"{p} is not UTF-8 text (byte {e.start})") from None
    texts: list[str] = []
    pairs: list[tuple[str, str]] = []
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        try:
            items = (
                json.loads(text)
                if suffix == ".json"
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except json.JSONDecodeError as e:
            raise UnlearningError(f"{p} is not valid JSON ({e.msg}, line {e.lineno})") from None
        except RecursionError:
            raise UnlearningError(f"{p} is not valid JSON (nested too deeply)") from None
        if not isinstance(items, list):
            raise UnlearningError(f"{p} must hold a list of strings or question/answer objects")
        for i, item in enumerate(items):
            for part in item.values() if isinstance(item, dict) else [item]:
                limits.check_text(part, UnlearningError, f"{p}: item {i}")
            if isinstance(item, str) and item.strip():
                texts.append(item.strip())
            elif isinstance(item, dict) and isinstance(item.get("question"), str):
                pairs.append((item["question"], str(item.get("answer", ""))))
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                texts.append(item["text"])
            else:
                raise UnlearningError(
                    f'{p}: item {i} is {str(item)[:40]!r}; expected {{"question": ..., '
                    '"answer": ...}, {"text": ...} or a string'
                )
    else:
        text = text.replace("\r\n", "\n")
        parts = (
            re.split(r"\n[ \t]*\n", text) if re.search(r"\n[ \t]*\n", text) else text.split("\n")
        )
        texts = [t.strip() for t in parts if t.strip()]
        for i, t in enumerate(texts):
            limits.check_text(t, UnlearningError, f"{p}: paragraph {i + 1}")
    return texts, pairs


# --------------------------------------------------------------------------- tokenising
class Tokenising:
    """Turns texts and QA into :class:`Example` s for one model (chat template or not)."""

    def __init__(self, target: Any, max_length: int, chat: bool | None = None):
        from conceptvec.qa import use_chat

        self.target = target
        self.tok = target.tokenizer
        self.max_length = max_length
        self.chat = use_chat(target, chat)
        self.eos = self.tok.eos_token_id

    def text(self, text: str) -> Example | None:
        """Return a text example (loss on every token after the first), or None if empty."""
        ids = list(self.tok(text, add_special_tokens=True)["input_ids"])[: self.max_length - 1]
        if len(ids) < 1:
            return None
        tail = [self.eos] if self.eos is not None else []
        return Example(ids[:1], ids[1:] + tail, "text")

    def qa(self, question: str, answer: str) -> Example:
        """Return a QA example: the prompted question, then the answer (loss on the answer)."""
        from conceptvec.qa import prompt_texts

        prompt = prompt_texts(self.target, [question], self.chat)[0]
        head = list(self.tok(prompt, add_special_tokens=not self.chat)["input_ids"])
        sep = "" if self.chat else " "
        tail = list(self.tok(sep + answer.strip(), add_special_tokens=False)["input_ids"])
        if self.eos is not None:
            tail.append(self.eos)
        room = max(1, self.max_length - len(tail))
        return Example(head[-room:], tail[: self.max_length - 1], "qa")


def halves(ex: Example) -> Example:
    """Return a text example re-cut at its middle (DPO on text: the first half is the prompt,
    the second half the answer); QA examples are returned as they are."""
    if ex.kind != "text":
        return ex
    ids = ex.prompt + ex.answer
    mid = max(1, len(ids) // 2)
    return Example(ids[:mid], ids[mid:], "text")


# ----------------------------------------------------------------------------- batches
class StepDataset(torch.utils.data.Dataset):
    """Item i is what the i-th sample of the run trains on, fixed in advance from the seed.

    Row ``i`` pairs forget example ``f[i]`` with retain example ``r[i]`` (and an "I don't
    know" answer for DPO). With a sequential sampler the global batch of step ``s`` is rows
    ``s·B .. (s+1)·B - 1`` whatever the number of processes, so one process and many see
    the same data, and a resumed run continues where it stopped.
    """

    def __init__(
        self,
        forget: list[Example],
        retain: list[Example],
        rows: int,
        seed: int,
        idk: list[Example] | None = None,
    ):
        rng = random.Random(seed)
        self.forget, self.retain, self.idk = forget, retain, idk
        self.f = _cycle(len(forget), rows, rng)
        self.r = _cycle(len(retain), rows, rng) if retain else []
        draws = (rng.randrange(len(IDK_ANSWERS)) for _ in range(rows))
        self.k: Any = np.fromiter(draws, dtype=np.int32, count=rows) if idk else []

    def __len__(self) -> int:
        return len(self.f)

    def __getitem__(self, i: int) -> dict[str, Example]:
        item = {"forget": self.forget[self.f[i]]}
        if self.retain:
            item["retain"] = self.retain[self.r[i]]
        if self.idk:
            item["idk"] = self.idk[self.f[i] * len(IDK_ANSWERS) + self.k[i]]
        return item


def _cycle(n: int, rows: int, rng: random.Random) -> Any:
    """Return ``rows`` indices: shuffled passes over ``range(n)``, as a compact int32 array
    (4 bytes a sample; the same draws as a list of passes, so the same schedule)."""
    out = np.empty(rows, dtype=np.int32)
    at = 0
    while at < rows:
        order = list(range(n))
        rng.shuffle(order)
        take = min(n, rows - at)
        out[at : at + take] = order[:take]
        at += take
    return out


def collate(pad_id: int):
    """Return a collator: a list of items -> ``{part: {input_ids, attention_mask, labels}}``,
    each part right-padded to its longest sequence."""

    def run(items: list[dict[str, Example]]) -> dict[str, dict[str, torch.Tensor]]:
        return {part: _pad([it[part] for it in items], pad_id) for part in items[0]}

    return run


def _pad(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        seq = e.prompt + e.answer
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(e.prompt) : len(seq)] = torch.tensor(e.answer)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
