"""Behavioural evaluation: a model's answers to questions, with and without an intervention.

The unit is a list of questions (a concept's QA, or unrelated QA). For each:

- **greedy answers**, generated in left-padded batches with a correct attention mask, using
  the chat template when the tokenizer has one (``chat=None``) and ConceptVectors' prompt
  ``Question: {q}\\n Answer:`` otherwise; the choice is recorded as ``prompting``;
- **BLEU and ROUGE-L** of those answers against a reference: by default the unperturbed
  model's own answers, computed once and reused (as ConceptVectors does); gold answers
  when given. BLEU is sacrebleu's sentence BLEU (0-1), ROUGE-L the F-measure of
  rouge-score;
- the **teacher-forced log-probability** of the reference answer, per token: a continuous
  score that sees effects greedy text hides (the answer can stay the same while its
  probability falls).

:func:`evaluate_qa` adds random-neuron controls: the same knockout on ``controls`` random
neurons of the same layers, with the percentile of the real change among theirs.
:func:`evaluate_completion` runs ConceptVectors' second probe, text completion
(``First_half`` -> the model's own ``Second_half``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from conceptvec.results import Result

from .answer_cache import cached_generate
from .errors import BadInterventionError
from .interventions.apply import generate as generate_ids
from .interventions.controls import percentile, random_controls
from .interventions.edit_specs import Edits, check_against, flatten
from .models.backends import Target, resolve
from .scoring import greedy_many, score_and_greedy, score_many
from .tokens import show
from .types import ModelSource, Tokenizer

GENERATE_ROWS = 64
"""Rows per batch where answers that left their draft are generated on
(:func:`answer_many`, :func:`answer_scored`) and where :func:`answer_sets` generates: a
decoding step of a small model on a CPU costs little more for 64 rows than for 16."""

PAPER_PROMPT = "Question: {question}\n Answer:"
"""ConceptVectors' QA prompt, used when the model has no chat template."""


# ------------------------------------------------------------------------ prompting
def use_chat(target: Target, chat: bool | None) -> bool:
    """Return whether prompts go through the chat template (``None``: when there is one)."""
    tok = target.tokenizer
    if tok is None:
        raise BadInterventionError(f"{target.model.name} has no tokenizer; pass tokenizer=tok")
    has = bool(getattr(tok, "chat_template", None))
    if chat and not has:
        raise BadInterventionError(
            f"the tokenizer of {target.model.name} has no chat template; drop chat/--chat"
        )
    return has if chat is None else bool(chat)


def prompt_texts(target: Target, questions: Sequence[str], chat: bool) -> list[str]:
    """Return each question as the text the model sees (chat template or the paper's prompt)."""
    tok = target.tokenizer
    if chat:
        from .chat import render_chat

        return [render_chat(tok, [{"role": "user", "content": q.strip()}]) for q in questions]
    return [PAPER_PROMPT.format(question=q.strip()) for q in questions]


def _encode(target: Target, texts: Sequence[str], chat: bool) -> list[list[int]]:
    """Return token ids per text (special tokens as the prompting style wants them)."""
    tok = target.tokenizer
    if chat:  # the template holds its own special tokens
        out = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    else:  # the model's own rule (its BOS or none), whatever the wrapper's tokenizer adds
        out = [target.encode(t) for t in texts]
    if any(not ids for ids in out):
        raise BadInterventionError("a prompt is empty; pass some text")
    return out


def _pad_value(target: Target) -> int:
    from .interventions.apply import pad_id

    pad = pad_id(target)
    return 0 if pad is None else pad


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    """Return ``rows`` as one right-padded ``[rows, longest]`` tensor (teacher forcing: a
    causal model never attends to padding that comes after)."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids


def _answer_ids(target: Target, answers: Sequence[str], chat: bool) -> list[list[int]]:
    """Return each answer's token ids as it follows its prompt when teacher-forced (a space
    first in the paper's prompting; an empty answer has none)."""
    sep = "" if chat else " "
    tok = target.tokenizer
    return [
        list(tok(sep + a.strip(), add_special_tokens=False)["input_ids"]) if a.strip() else []
        for a in answers
    ]


def _batches(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, max(1, size))]


# ----------------------------------------------------------------------- primitives
def answer(
    model: Any,
    prompts: Sequence[str],
    intervention: Edits = (),
    *,
    chat: bool | None = None,
    raw: bool = False,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    tokenizer: Any = None,
    strip: bool = True,
    cache: bool = True,
    draft: ModelSource | None = None,
) -> list[str]:
    """Return the greedy answer to each prompt, generated in left-padded batches.

    Questions are wrapped in the chat template (or the paper's prompt, see :func:`use_chat`);
    ``raw=True`` feeds the prompts as they are (text completion). ``strip=False`` returns
    the decoded text exactly as generated (leading space or newline kept). Without an
    intervention the answers are cached on disk per weights and prompt
    (:mod:`conceptvec.answer_cache`; ``cache=False`` generates them anew).

    ``draft``: another model with the same tokenizer whose answers are likely to be close,
    say the base of a fine-tuned or unlearned ``model``. Its greedy answers (from its own
    cache) are verified on ``model`` as :func:`answer_many` verifies a knockout's: one
    teacher-forced pass keeps each draft answer up to the first token ``model`` would not
    pick, and only the answers that leave it are generated on. The tokens are ``model``'s
    greedy tokens whatever the draft (a poor draft only saves less), with the rounding
    caveat of :func:`answer_many`. Used with an intervention, or on a backend without
    torch hooks, the draft is ignored.
    """
    target = resolve(model, tokenizer)
    rows = _prompt_rows(target, prompts, chat, raw)
    if draft is None or flatten(intervention) or not target.backend.torch_hooks:
        made = _generate_rows(target, rows, intervention, max_new_tokens, batch_size, cache)
    else:
        made = _drafted_rows(target, resolve(draft), rows, max_new_tokens, batch_size, cache)
    return _decode(target, made, strip)


def _drafted_rows(
    target: Target,
    draft: Target,
    rows: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    cache: bool,
) -> list[list[int]]:
    """Return ``target``'s greedy new token ids of each prompt row, verified from ``draft``'s
    (see :func:`answer`); cached as generated ones are, under ``target``'s weights."""
    stops = _eos_ids(target)
    vocab = target.model.dims.vocab

    def run(todo: list[int]) -> list[list[int]]:
        if max_new_tokens < 1 or not todo:
            return [[] for _ in todo]
        sub = [rows[i] for i in todo]
        guess = [
            _until_stop(d, stops, max_new_tokens)
            for d in _generate_rows(draft, sub, (), max_new_tokens, batch_size)  # a guess: cached
        ]
        guess = [g if all(0 <= t < vocab for t in g) else [] for g in guess]
        return _verified(target, sub, guess, [[]], max_new_tokens, batch_size)[0]

    if not cache:
        return run(list(range(len(rows))))
    pad = _pad_value(target)
    return cached_generate(target.module, target.backend.name, rows, max_new_tokens, pad, run)


def answer_sets(
    model: ModelSource,
    sets: Sequence[tuple[Sequence[str], bool]],
    *,
    chat: bool | None = None,
    max_new_tokens: int = 32,
    batch_size: int = GENERATE_ROWS,
    tokenizer: Tokenizer | None = None,
    strip: bool = True,
) -> list[list[str]]:
    """Return :func:`answer` of the unedited model for each ``(prompts, raw)`` of ``sets``,
    all their prompts generated together, in batches of up to ``batch_size`` rows.

    Decoding a small model on a CPU costs little more per step for 64 rows than for 16
    (each step reads every weight once), so a concept's question, unrelated-question and
    text-completion prompts together take a fraction of three calls of 16-row batches."""
    target = resolve(model, tokenizer)
    rows = [_prompt_rows(target, list(p), chat, raw) if p else [] for p, raw in sets]
    made = _generate_rows(
        target, [r for part in rows for r in part], (), max_new_tokens, batch_size
    )
    out, start = [], 0
    for part in rows:
        out.append(_decode(target, made[start : start + len(part)], strip))
        start += len(part)
    return out


def _prompt_rows(target: Target, prompts: Sequence[str], chat: bool | None, raw: bool):
    """Return each prompt's token ids as generation sees them (see :func:`answer`)."""
    texts = list(prompts) if raw else prompt_texts(target, prompts, use_chat(target, chat))
    return _encode(target, texts, chat=not raw and use_chat(target, chat))


def _generate_rows(
    target: Target,
    rows: list[list[int]],
    intervention: Edits,
    max_new_tokens: int,
    batch_size: int,
    cache: bool = True,
) -> list[list[int]]:
    """Return the greedy new token ids of each prompt row, in left-padded batches (the
    unedited model's from the answer cache unless ``cache=False``)."""
    pad = _pad_value(target)

    def run(todo: list[int]) -> list[list[int]]:
        made: list[list[int]] = []
        for batch in _batches(len(todo), batch_size):
            ids, mask = _left_pad([rows[todo[i]] for i in batch], pad)
            new = generate_ids(
                target, ids.to(target.device), intervention, max_new_tokens, mask.to(target.device)
            )
            made += new.tolist()
        return made

    if flatten(intervention) or not cache:
        return run(list(range(len(rows))))
    # the unedited model's answers: from the cache when these weights gave them before
    return cached_generate(target.module, target.backend.name, rows, max_new_tokens, pad, run)


def _decode(target: Target, made: list[list[int]], strip: bool) -> list[str]:
    texts = [target.tokenizer.decode(r, skip_special_tokens=True) for r in made]
    return [t.strip() for t in texts] if strip else texts


def answer_many(
    model: ModelSource,
    prompts: Sequence[str],
    interventions: Sequence[Edits],
    *,
    chat: bool | None = None,
    raw: bool = False,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    tokenizer: Tokenizer | None = None,
    strip: bool = True,
) -> list[list[str]]:
    """Return :func:`answer` under each of ``interventions`` (one list each), the same greedy
    answers, found by verifying a draft instead of decoding token by token.

    The draft is the unedited model's answers (from the answer cache). For each
    intervention, one teacher-forced pass over prompt + draft gives the edited model's greedy
    token at every draft position (:func:`conceptvec.scoring.greedy_many`: the variants
    share the layers below their first edit); a row keeps the draft up to its first
    disagreement, takes the edited model's token there, and only rows that go on past it
    are generated further, from that point. A knockout that leaves most answers as they
    were costs a fraction of a forward pass instead of a full generation. Edits confined to
    some positions (``prompt``, ``generated``, ``last``), patches and backends other than
    ``transformers`` are generated one intervention at a time, as :func:`answer` does.
    The tokens are those of greedy decoding in exact arithmetic; a teacher-forced pass
    rounds differently from decoding token by token (as another batch shape does), so a
    near-tie in the last bits could in principle pick another token.
    """
    target = resolve(model, tokenizer)
    edits = [flatten(iv) for iv in interventions]
    if not target.backend.torch_hooks or not all(map(_verifiable, edits)):
        return _one_by_one(target, prompts, edits, chat, raw, max_new_tokens, batch_size, strip)
    rows = _prompt_rows(target, prompts, chat, raw)
    if max_new_tokens < 1 or not rows:
        return _one_by_one(target, prompts, edits, chat, raw, max_new_tokens, batch_size, strip)
    stops = _eos_ids(target)
    draft = [
        _until_stop(d, stops, max_new_tokens)
        for d in _generate_rows(target, rows, (), max_new_tokens, batch_size)
    ]
    made = _verified(target, rows, draft, edits, max_new_tokens, batch_size)
    return [_decode(target, m, strip) for m in made]


def _one_by_one(
    target: Target,
    prompts: Sequence[str],
    edits: list[list],
    chat: bool | None,
    raw: bool,
    max_new_tokens: int,
    batch_size: int,
    strip: bool,
) -> list[list[str]]:
    return [
        answer(
            target,
            prompts,
            e,
            chat=chat,
            raw=raw,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            strip=strip,
        )
        for e in edits
    ]


def _verified(
    target: Target,
    rows: list[list[int]],
    draft: list[list[int]],
    edits: list[list],
    max_new_tokens: int,
    batch_size: int,
) -> list[list[list[int]]]:
    """Return, per edit set of ``edits``, each row's greedy new tokens: ``draft[i]`` (a
    guess, ended at its first stop token) kept up to the first position where the model
    under the edits would pick another token, and generated on from there where needed
    (see :func:`answer_many`). Any draft gives the same tokens; a good one saves work."""
    stops = _eos_ids(target)
    pad = _pad_value(target)
    made: list[list[list[int]]] = [[[] for _ in rows] for _ in edits]
    more: list[list[int]] = [[] for _ in edits]  # rows to generate further, per edit
    for batch in _batches(len(rows), batch_size):
        ids = _right_pad([rows[i] + draft[i] for i in batch], pad)
        spans = [(len(rows[i]) - 1, len(draft[i]) + 1) for i in batch]
        preds = greedy_many(target, ids.to(target.device), spans, edits)
        for k, per in enumerate(preds):
            for i, p in zip(batch, per):
                out, done = _accept(draft[i], p, stops, max_new_tokens)
                made[k][i] = out
                if not done:
                    more[k].append(i)
    # decoding reads every weight once a step whatever the rows: generate in wide batches
    wide = max(batch_size, GENERATE_ROWS)
    together = _side_by_side(edits, more)
    if together:  # activation edits: their rows generated on in shared batches
        _continue(target, rows, made, together, edits, stops, max_new_tokens, wide)
    for k in range(len(edits)):
        if more[k] and k not in together:
            _continue(target, rows, made, [k], edits, stops, max_new_tokens, wide)
    return made


def _side_by_side(edits: list[list], more: list[list[int]]) -> list[int]:
    """The interventions whose unfinished rows can share a batch, each edit confined to its
    own rows: activation edits only, no edit shared between two of them."""
    from .interventions.edit_specs import WeightEdit

    picked = [
        k for k, e in enumerate(edits) if more[k] and not any(isinstance(x, WeightEdit) for x in e)
    ]
    seen: list = [x for k in picked for x in edits[k]]
    return picked if len(picked) > 1 and len(set(seen)) == len(seen) else []


def _verifiable(edits: list) -> bool:
    """Whether teacher forcing sees the edits as generation does: every position edited."""
    from .interventions.edit_specs import NeuronEdit, Steer, WeightEdit

    return all(
        isinstance(e, WeightEdit) or (isinstance(e, (NeuronEdit, Steer)) and e.positions == "all")
        for e in edits
    )


def _eos_ids(target: Target) -> set[int]:
    """The token ids that end a generation (the generation config's end of sequence)."""
    config = target.backend.generation_config
    value = getattr(config, "eos_token_id", None) if config is not None else None
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}


def _until_stop(ids: list[int], stops: set[int], limit: int) -> list[int]:
    """``ids`` up to and including the first end-of-sequence token, at most ``limit``."""
    for n, t in enumerate(ids[:limit]):
        if t in stops:
            return list(ids[: n + 1])
    return list(ids[:limit])


def _accept(
    draft: list[int], pred: list[int], stops: set[int], limit: int
) -> tuple[list[int], bool]:
    """Return (the greedy tokens the verification settles, whether the answer is finished).

    ``pred[j]`` is the edited model's greedy token after the prompt and ``draft[:j]``.
    """
    n = next((j for j, t in enumerate(draft) if pred[j] != t), len(draft))
    if n == len(draft) and (len(draft) >= limit or (draft and draft[-1] in stops)):
        return list(draft), True  # the whole draft stands, and it was finished
    out = list(draft[:n]) + [pred[n]]
    return out, len(out) >= limit or out[-1] in stops


def _continue(
    target: Target,
    rows: list[list[int]],
    made: list[list[list[int]]],
    which: list[int],
    edits: list[list],
    stops: set[int],
    limit: int,
    batch_size: int,
) -> None:
    """Generate the rest of the unfinished answers of interventions ``which`` (in place in
    ``made[k][i]``), from the prompt and the tokens settled so far. Rows of several
    interventions share a batch, each intervention's edits confined to its own rows."""
    limit_ctx = target.model.context_length
    todo = [(k, i) for k in which for i in _unfinished(made[k], stops, limit)]
    # most left to go first: a batch runs as long as its longest rest, so rows that left
    # the draft late share short batches
    todo.sort(key=lambda p: len(made[p[0]][p[1]]))
    for batch in _batches(len(todo), batch_size):
        pairs = [todo[j] for j in batch]
        width = max(len(rows[i]) + len(made[k][i]) for k, i in pairs)
        budget = max(limit - len(made[k][i]) for k, i in pairs)
        # rows with less left to go generate a few tokens too many, cut below; one row at a
        # time where the longest prompt would not leave room for the longest rest
        groups = [[p] for p in pairs] if limit_ctx and width + budget > limit_ctx else [pairs]
        for group in groups:
            budget = max(limit - len(made[k][i]) for k, i in group)
            ids, mask = _left_pad([rows[i] + made[k][i] for k, i in group], _pad_value(target))
            flat, where = _rows_of(edits, [k for k, _ in group], len(which) > 1)
            new = generate_ids(
                target, ids.to(target.device), flat, budget, mask.to(target.device), rows=where
            ).tolist()
            for (k, i), tail in zip(group, new):
                made[k][i] = _until_stop(made[k][i] + tail, stops, limit)


def _unfinished(made: list[list[int]], stops: set[int], limit: int) -> list[int]:
    return [i for i, m in enumerate(made) if len(m) < limit and not (m and m[-1] in stops)]


def _rows_of(edits: list[list], owner: list[int], confine: bool) -> tuple[list, list | None]:
    """The edits of the interventions that own a batch's rows (``owner[r]``), each with the
    rows it acts on (None: every row, when one intervention has the batch)."""
    if not confine:
        return edits[owner[0]], None
    flat, where = [], []
    for k in dict.fromkeys(owner):
        for e in edits[k]:
            flat.append(e)
            where.append([r for r, o in enumerate(owner) if o == k])
    return flat, where


def answer_logprobs(
    model: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    intervention: Edits = (),
    *,
    chat: bool | None = None,
    raw: bool = False,
    batch_size: int = 16,
    tokenizer: Any = None,
) -> list[float]:
    """Return, per prompt, the mean log-probability per token of its answer, teacher-forced.

    Each sequence is prompt + answer, right-padded (a causal model never attends to padding
    that comes after), scored in one forward pass per batch. An empty answer scores 0.0.
    """
    return answer_logprobs_many(
        model,
        prompts,
        answers,
        [intervention],
        chat=chat,
        raw=raw,
        batch_size=batch_size,
        tokenizer=tokenizer,
    )[0]


def answer_logprobs_many(
    model: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    interventions: Sequence[Edits],
    *,
    chat: bool | None = None,
    raw: bool = False,
    batch_size: int = 16,
    tokenizer: Any = None,
) -> list[list[float]]:
    """Return :func:`answer_logprobs` under each of ``interventions`` (one list each).

    On a ``transformers`` model the variants share the layers below their first edited
    layer, and the LM head runs on the answer positions only (:mod:`conceptvec.scoring`):
    random controls in a late layer cost a fraction of a forward pass each.
    """
    target = resolve(model, tokenizer)
    if len(prompts) != len(answers):
        raise BadInterventionError(f"{len(prompts)} prompts but {len(answers)} answers")
    is_chat = not raw and use_chat(target, chat)
    texts = list(prompts) if raw else prompt_texts(target, prompts, is_chat)
    heads = _encode(target, texts, is_chat)
    tails = _answer_ids(target, answers, is_chat)
    pad = _pad_value(target)
    scores = [[0.0] * len(heads) for _ in interventions]
    for batch in _batches(len(heads), batch_size):
        ids = _right_pad([heads[i] + tails[i] for i in batch], pad)
        spans = [(len(heads[i]) - 1, tails[i]) for i in batch]
        per = score_many(target, ids.to(target.device), spans, list(interventions))
        for k, values in enumerate(per):
            for r, i in enumerate(batch):
                scores[k][i] = values[r]
    return scores


def answer_scored(
    model: ModelSource,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    chat: bool | None = None,
    raw: bool = False,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    tokenizer: Tokenizer | None = None,
    strip: bool = True,
    cache: bool = True,
) -> tuple[list[str], list[float]]:
    """Return (:func:`answer`'s greedy answers, :func:`answer_logprobs` of ``references``)
    of the unedited ``model``, the two from one teacher-forced pass where they can be.

    The pass over prompt + reference that scores each reference also gives the model's
    greedy token at every position of it: the reference is then a draft of the model's own
    answer, verified as :func:`answer_many` verifies one (kept up to the first token the
    model would not pick, generated on from there). When the references are another
    model's answers (a base before unlearning), most of a fine-tuned model's answers need
    no generation at all. The log p values are those of :func:`answer_logprobs`, bit for
    bit; the answers are the model's greedy answers whatever the references (with
    :func:`answer_many`'s rounding caveat), cached like :func:`answer`'s.
    """
    target = resolve(model, tokenizer)
    if len(prompts) != len(references):
        raise BadInterventionError(f"{len(prompts)} prompts but {len(references)} answers")
    if not target.backend.torch_hooks or max_new_tokens < 1:
        lps = answer_logprobs(
            target, prompts, references, chat=chat, raw=raw, batch_size=batch_size
        )
        ans = answer(
            target, prompts, chat=chat, raw=raw, max_new_tokens=max_new_tokens,
            batch_size=batch_size, strip=strip, cache=cache,
        )  # fmt: skip
        return ans, lps
    is_chat = not raw and use_chat(target, chat)
    heads = _prompt_rows(target, prompts, chat, raw)
    tails = _answer_ids(target, references, is_chat)
    pad = _pad_value(target)
    stops = _eos_ids(target)
    scores = [0.0] * len(heads)
    made: list[list[int]] = [[] for _ in heads]
    for batch in _batches(len(heads), batch_size):
        ids = _right_pad([heads[i] + tails[i] for i in batch], pad)
        spans = [(len(heads[i]) - 1, tails[i]) for i in batch]
        values, preds = score_and_greedy(target, ids.to(target.device), spans)
        for r, i in enumerate(batch):
            scores[i] = values[r]
            draft = tails[i][:max_new_tokens]
            made[i] = _accept(draft, preds[r][: len(draft) + 1], stops, max_new_tokens)[0]

    def run(todo: list[int]) -> list[list[int]]:
        """The answers of rows ``todo``: each settled draft, generated on where unfinished."""
        mine = [[list(made[i]) for i in todo]]
        wide = max(batch_size, GENERATE_ROWS)
        _continue(target, [heads[i] for i in todo], mine, [0], [[]], stops, max_new_tokens, wide)
        return mine[0]

    if cache:
        rows = cached_generate(target.module, target.backend.name, heads, max_new_tokens, pad, run)
    else:
        rows = run(list(range(len(heads))))
    return _decode(target, rows, strip), scores


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Return per-pair ``bleu`` (sacrebleu sentence BLEU / 100) and ``rouge_l`` (F-measure).

    Two empty strings score 1.0 on both.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    bleu, rouge = [], []
    for h, r in zip(hypotheses, references):
        if not h.strip() and not r.strip():
            bleu.append(1.0)
            rouge.append(1.0)
            continue
        bleu.append(sacrebleu.sentence_bleu(h, [r]).score / 100.0)
        rouge.append(scorer.score(r, h)["rougeL"].fmeasure)
    return {"bleu": bleu, "rouge_l": rouge}


# ------------------------------------------------------------------------- results
@dataclass
class QAScores:
    """One condition (no edit, the intervention, or one control) on a list of questions."""

    label: str
    logprob: list[float]
    """Per question: mean log p per token of the reference answer, teacher-forced."""
    answers: list[str] | None = None
    bleu: list[float] | None = None
    rouge_l: list[float] | None = None

    @property
    def mean_logprob(self) -> float:
        """Mean over questions of :attr:`logprob`."""
        return _mean(self.logprob)

    @property
    def mean_bleu(self) -> float | None:
        """Mean BLEU against the reference (None when nothing was generated)."""
        return None if self.bleu is None else _mean(self.bleu)

    @property
    def mean_rouge_l(self) -> float | None:
        """Mean ROUGE-L against the reference (None when nothing was generated)."""
        return None if self.rouge_l is None else _mean(self.rouge_l)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


@dataclass
class QAEvaluation(Result):
    """What :func:`evaluate_qa` found: the reference, the base model and the intervention,
    with random-neuron controls."""

    model: str
    prompting: str
    """``chat`` (the chat template), ``paper`` (``Question: ...\\n Answer:``) or ``raw``."""
    reference_kind: str
    """``model`` (the unperturbed model's own answers) or ``gold``."""
    intervention: list[str]
    questions: list[str]
    references: list[str]
    base: QAScores
    after: QAScores
    controls: list[QAScores] = field(default_factory=list)
    control_edits: list[list[str]] = field(default_factory=list)
    add_bos: bool | None = None
    """Whether plain prompts were run with the model's BOS in front (the model's own Hugging
    Face tokenizer rule, the same on every backend; chat prompts follow their template)."""

    @property
    def delta_logprob(self) -> float:
        """Change of the mean per-token log p of the references (negative: answers hurt)."""
        return self.after.mean_logprob - self.base.mean_logprob

    @property
    def control_deltas(self) -> list[float]:
        """The same change under each random control."""
        return [c.mean_logprob - self.base.mean_logprob for c in self.controls]

    @property
    def percentile(self) -> float | None:
        """Percentile of the *drop* (``-delta``) among the controls' drops (100: the
        intervention hurt the answers more than every control did)."""
        return percentile(-self.delta_logprob, [-d for d in self.control_deltas])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict with every number (field names kept)."""
        out = asdict(self)
        out.update(
            delta_logprob=self.delta_logprob,
            control_deltas=self.control_deltas,
            percentile=self.percentile,
            base_mean_logprob=self.base.mean_logprob,
            after_mean_logprob=self.after.mean_logprob,
            after_mean_bleu=self.after.mean_bleu,
            after_mean_rouge_l=self.after.mean_rouge_l,
        )
        return out

    def __str__(self) -> str:
        pct = "" if self.percentile is None else f", percentile {self.percentile:.0f}"
        lines = [
            f"{self.model}  {', '.join(self.intervention) or 'no intervention'}  "
            f"[{self.prompting} prompts, reference: {self.reference_kind} answers]",
            f"  log p per answer token: {self.base.mean_logprob:.4f} -> "
            f"{self.after.mean_logprob:.4f} ({self.delta_logprob:+.4f}"
            f"{pct} among {len(self.controls)} controls)",
        ]
        if self.after.bleu is not None:
            lines.append(
                f"  BLEU {self.after.mean_bleu:.3f}  ROUGE-L {self.after.mean_rouge_l:.3f}"
                " against the reference"
            )
        for i, q in enumerate(self.questions):
            lines.append(f"  Q {show(q.strip())}")
            lines.append(f"    reference: {show(self.references[i])}")
            if self.after.answers is not None and self.after.answers[i] != self.references[i]:
                lines.append(f"    after:     {show(self.after.answers[i])}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        printer.text(str(self))

    def _html_rows(self) -> tuple[str, list[dict[str, Any]]]:
        rows = []
        for i, q in enumerate(self.questions):
            after = self.after.answers[i] if self.after.answers is not None else None
            rows.append(
                {
                    "question": q.strip(),
                    "reference": self.references[i],
                    "log p before": self.base.logprob[i],
                    "log p after": self.after.logprob[i],
                    "answer after": after,
                    "ROUGE-L": None if self.after.rouge_l is None else self.after.rouge_l[i],
                }
            )
        pct = "" if self.percentile is None else f", percentile {self.percentile:.0f}"
        title = (
            f"{self.model}: {', '.join(self.intervention) or 'no intervention'}: log p per "
            f"answer token {self.base.mean_logprob:.4f} -> {self.after.mean_logprob:.4f} "
            f"({self.delta_logprob:+.4f}{pct} among {len(self.controls)} controls)"
        )
        return title, rows


# ---------------------------------------------------------------------- evaluation
def evaluate_qa(
    model: Any,
    questions: Sequence[str],
    intervention: Edits = (),
    *,
    references: Sequence[str] | None = None,
    gold: Sequence[str] | None = None,
    chat: bool | None = None,
    raw: bool = False,
    max_new_tokens: int = 32,
    controls: int = 0,
    generate_controls: bool = False,
    generate: bool = True,
    base: QAScores | None = None,
    seed: int = 0,
    batch_size: int = 16,
    tokenizer: Any = None,
) -> QAEvaluation:
    """Return a :class:`QAEvaluation` of ``intervention`` on ``questions``.

    The reference answers are ``gold`` when given, else ``references`` (the unperturbed
    model's answers from an earlier call, to reuse them), else generated here without the
    intervention. ``controls`` random same-layer versions of the intervention give the
    percentile of the log-probability drop (``generate_controls`` also generates their
    answers for BLEU/ROUGE). ``generate=False`` skips generation after the edit (teacher-
    forced scores only). ``base`` reuses the unperturbed scores of an earlier call with the
    same questions and references. ``raw=True`` treats ``questions`` as plain text prompts.
    """
    target = resolve(model, tokenizer)
    edits = flatten(intervention)
    setup = _QASetup.make(
        target,
        questions,
        [edits],
        references,
        gold,
        chat,
        raw,
        max_new_tokens,
        controls,
        base,
        batch_size,
    )
    chat = setup.chat
    questions, refs, base = setup.questions, setup.refs, setup.base
    ctrl_edits = random_controls(edits, target.model.dims.d_mlp, controls, seed) if edits else []
    after, ctrls = base, []
    if edits:  # the intervention and its controls scored together, sharing what they share
        lps = answer_logprobs_many(
            target, questions, refs, [edits, *ctrl_edits], chat=chat, raw=raw, batch_size=batch_size
        )
        after = QAScores("intervention", lps[0])
        ctrls = [QAScores(f"control {k}", lp) for k, lp in enumerate(lps[1:])]
    for scores, edit, gen in [(after, edits, generate and bool(edits))] + [
        (c, e, generate_controls and generate) for c, e in zip(ctrls, ctrl_edits)
    ]:
        if gen:
            scores.answers = answer(
                target,
                questions,
                edit,
                max_new_tokens=max_new_tokens,
                chat=chat,
                raw=raw,
                batch_size=batch_size,
            )
            _text_scores(scores, refs)
    return setup.result(edits, after, ctrls, ctrl_edits)


def evaluate_qa_many(
    model: ModelSource,
    questions: Sequence[str],
    interventions: Sequence[Edits],
    *,
    references: Sequence[str] | None = None,
    gold: Sequence[str] | None = None,
    chat: bool | None = None,
    raw: bool = False,
    max_new_tokens: int = 32,
    controls: int = 0,
    generate: bool = True,
    base: QAScores | None = None,
    seed: int = 0,
    batch_size: int = 16,
    tokenizer: Tokenizer | None = None,
    controls_if: Callable[[QAEvaluation], bool] | None = None,
) -> list[QAEvaluation]:
    """Return :func:`evaluate_qa` of each of ``interventions`` (same arguments), with the same
    numbers, computed together: the references and the base scores once, every intervention
    and all their controls teacher-forced in one :func:`answer_logprobs_many` (one unedited
    pass per batch of questions), and the edited answers by :func:`answer_many` (the
    unedited answers verified under each edit; only the rows an edit changes are generated).

    ``controls_if`` scores an intervention's controls only where it returns True for the
    intervention's evaluation without them (the rest keep ``controls == []``): the
    interventions are scored first, then the controls of those it picks, with the numbers
    the controls get when all are scored (a variant's scores do not depend on the others).
    """
    target = resolve(model, tokenizer)
    edits = [flatten(iv) for iv in interventions]
    setup = _QASetup.make(
        target,
        questions,
        edits,
        references,
        gold,
        chat,
        raw,
        max_new_tokens,
        controls,
        base,
        batch_size,
    )
    chat = setup.chat
    questions, refs, base = setup.questions, setup.refs, setup.base
    d_mlp = target.model.dims.d_mlp
    ctrl_edits = [random_controls(e, d_mlp, controls, seed) if e else [] for e in edits]

    def scored(variants: list[list]) -> list[list[float]]:
        if not variants:
            return []
        return answer_logprobs_many(
            target, questions, refs, variants, chat=chat, raw=raw, batch_size=batch_size
        )

    edited = [k for k, e in enumerate(edits) if e]
    if controls_if is not None and controls:
        # the interventions alone first, then the controls of those controls_if picks
        own = dict(zip(edited, scored([edits[k] for k in edited])))
        for k in edited:
            alone = setup.result(edits[k], QAScores("intervention", own[k]), [], [])
            if not controls_if(alone):
                ctrl_edits[k] = []
        found = iter(scored([v for k in edited for v in ctrl_edits[k]]))
        lps = {k: [own[k]] + [next(found) for _ in ctrl_edits[k]] for k in edited}
    else:
        found = iter(scored([v for k in edited for v in (edits[k], *ctrl_edits[k])]))
        lps = {k: [next(found) for _ in range(1 + len(ctrl_edits[k]))] for k in edited}
    texts = iter(
        answer_many(
            target,
            questions,
            [edits[k] for k in edited],
            max_new_tokens=max_new_tokens,
            chat=chat,
            raw=raw,
            batch_size=batch_size,
        )
        if generate and edited
        else []
    )
    out = []
    for k, (e, c) in enumerate(zip(edits, ctrl_edits)):
        after, ctrls = base, []
        if e:
            after = QAScores("intervention", lps[k][0])
            ctrls = [QAScores(f"control {j}", lp) for j, lp in enumerate(lps[k][1:])]
            if generate:
                after.answers = next(texts)
                _text_scores(after, refs)
        out.append(setup.result(e, after, ctrls, c))
    return out


def _text_scores(scores: QAScores, refs: list[str]) -> None:
    text = text_scores(scores.answers or [], refs)
    scores.bleu, scores.rouge_l = text["bleu"], text["rouge_l"]


@dataclass
class _QASetup:
    """What :func:`evaluate_qa` and :func:`evaluate_qa_many` share: the checked questions,
    the references (and their kind), the base scores and the prompting."""

    target: Target
    questions: list[str]
    refs: list[str]
    kind: str
    base: QAScores
    prompting: str
    chat: bool

    @classmethod
    def make(
        cls,
        target: Target,
        questions: Sequence[str],
        edits: list[list],
        references: Sequence[str] | None,
        gold: Sequence[str] | None,
        chat: bool | None,
        raw: bool,
        max_new_tokens: int,
        controls: int,
        base: QAScores | None,
        batch_size: int,
    ) -> _QASetup:
        questions = [str(q) for q in questions]
        if not questions:
            raise BadInterventionError("no questions given; pass at least one")
        if max_new_tokens < 1 or controls < 0:
            raise BadInterventionError(
                f"max_new_tokens must be >= 1 and controls >= 0 (got {max_new_tokens}, {controls})"
            )
        d = target.model.dims
        for e in edits:
            check_against(e, d.n_layers, d.d_mlp, d.d_model)
        prompting = "raw" if raw else ("chat" if use_chat(target, chat) else "paper")
        chat = prompting == "chat"
        if gold is not None:
            refs, kind = [str(g) for g in gold], "gold"
        elif references is not None:
            refs, kind = [str(r) for r in references], "model"
        else:
            refs = answer(
                target,
                questions,
                (),
                max_new_tokens=max_new_tokens,
                chat=chat,
                raw=raw,
                batch_size=batch_size,
            )
            kind = "model"
        if len(refs) != len(questions):
            raise BadInterventionError(
                f"{len(questions)} questions but {len(refs)} reference answers"
            )
        if base is None:
            base = QAScores(
                "base",
                answer_logprobs(
                    target, questions, refs, (), chat=chat, raw=raw, batch_size=batch_size
                ),
            )
        elif len(base.logprob) != len(questions):
            raise BadInterventionError(
                f"base has {len(base.logprob)} scores for {len(questions)} questions"
            )
        if kind == "model" and references is None:
            base.answers = refs
            base.bleu = base.rouge_l = [1.0] * len(refs)
        return cls(target, questions, refs, kind, base, prompting, prompting == "chat")

    def result(
        self, edits: list, after: QAScores, ctrls: list[QAScores], ctrl_edits: list[list]
    ) -> QAEvaluation:
        return QAEvaluation(
            model=self.target.model.name,
            prompting=self.prompting,
            reference_kind=self.kind,
            intervention=[str(e) for e in edits],
            questions=self.questions,
            references=self.refs,
            base=self.base,
            after=after,
            controls=ctrls,
            control_edits=[[str(e) for e in c] for c in ctrl_edits],
            add_bos=self.target.add_bos,
        )


def evaluate_completion(
    model: Any,
    first_halves: Sequence[str],
    intervention: Edits = (),
    *,
    references: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    controls: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    tokenizer: Any = None,
) -> QAEvaluation:
    """Return a :class:`QAEvaluation` of text completion: each ``First_half`` is continued
    greedily, and the continuation compared with the unperturbed model's own (ConceptVectors'
    second probe; its gold ``Second_half`` can be passed as ``references``)."""
    return evaluate_qa(
        model,
        first_halves,
        intervention,
        gold=references,
        raw=True,
        max_new_tokens=max_new_tokens,
        controls=controls,
        seed=seed,
        batch_size=batch_size,
        tokenizer=tokenizer,
    )
