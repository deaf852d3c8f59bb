"""What an exported lm-eval task runs: its documents and its score per document.

An export folder's ``utils.py`` binds :func:`load_docs` to its own folder; each task YAML
names these functions with lm-eval's ``!function utils.NAME``. A document is one line of
the task's JSONL file::

    {"question": ..., "prompt": ..., "reference": ..., "continuation": ..., "reference_tokens": N}

``prompt`` is the exact text conceptvec's QA feeds the model (the chat template already
applied, or ConceptVectors' ``Question: ...\\n Answer:``, or a text-completion first half);
``continuation`` is the reference as the export model generated it (gold answers: with the
separator conceptvec puts before them); ``reference`` is it stripped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conceptvec.errors import PluginError
from conceptvec.files import confined, read_bounded

DATA_LIMIT = 256 << 20
"""The largest task data file read (bytes)."""


def load_docs(folder: str | Path, data_file: str, **_metadata: Any) -> dict[str, object]:
    """Return ``{"test": datasets.Dataset}`` of the JSONL ``data_file`` inside ``folder``.

    lm-eval passes the task's ``metadata`` (and ``--metadata``) as keyword arguments too;
    they do not change the documents.
    """
    import datasets

    path = confined(folder, data_file, PluginError, "re-export the tasks")
    raw = read_bounded(path, PluginError, "re-export the tasks", DATA_LIMIT)
    rows = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise PluginError(f"{path}: line {n} is not JSON ({e.msg}); re-export") from None
    if not rows:
        raise PluginError(f"{path} holds no documents; re-export the tasks")
    return {"test": datasets.Dataset.from_list(rows)}


def with_reference(docs: Any) -> Any:
    """Return the documents whose reference is not empty (an empty answer has no
    log-probability to score; conceptvec counts it as 0 and lm-eval cannot score it)."""
    return docs.filter(lambda d: bool(d["reference"]))


def score_generation(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Return ROUGE-L, sentence BLEU / 100 (conceptvec's :func:`~conceptvec.qa.text_scores`)
    and exact match of the generated answer (stripped) against the document's reference."""
    from conceptvec.qa import text_scores

    answer = results[0].strip()
    scores = text_scores([answer], [doc["reference"]])
    return {
        "rouge_l": scores["rouge_l"][0],
        "sentence_bleu": scores["bleu"][0],  # mean sentence BLEU / 100, not corpus BLEU
        "exact_match": float(answer == doc["reference"]),
    }


def score_logprob(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    """Return the reference's mean log-probability per token (conceptvec's ``logprob``) and
    whether greedy decoding would produce it (``greedy``, 0 or 1).

    lm-eval's log-likelihood can include a separator token moved over from the prompt (a
    chat prompt's final newline, which the model predicts with probability ~1); the mean is
    taken over the reference's own tokens, as conceptvec counts them.
    """
    loglikelihood, is_greedy = results[0]
    return {
        "logprob": float(loglikelihood) / max(1, int(doc["reference_tokens"])),
        "greedy": float(bool(is_greedy)),
    }
