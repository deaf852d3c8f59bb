"""What a run starts from: the model to train, the concept, its vector and the data sets."""

from __future__ import annotations

import copy
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptvec.concepts.benchmark import ConceptEntry, read_concepts
from conceptvec.concepts.record import ConceptVector
from conceptvec.errors import UnlearningError, listing
from conceptvec.neurons import NeuronId

from .data import IDK_ANSWERS, DataSpec, Example, Tokenising, chunk_text, halves, read_pairs
from .data import split_questions as split_qa

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------- model
def trainable_module(model: Any, dtype: Any = None) -> tuple[Any, Any, Any]:
    """Return (Model, HF module we may train in place, tokenizer) for any model source.

    A source given by name is loaded fresh; a live object is deep-copied first, so the
    caller's model is never changed. Quantized models are refused with advice.
    """
    import torch

    from conceptvec.models import Model, load

    owned = isinstance(model, (str, os.PathLike))
    m = model if isinstance(model, Model) else load(model, quiet=True, dtype=dtype)
    if isinstance(model, Model) and model._hf is not None:
        owned = False
    hf = m.hf
    quant = getattr(hf, "hf_quantizer", None) or getattr(hf.config, "quantization_config", None)
    if quant is not None or getattr(hf, "is_quantized", False):
        raise UnlearningError(
            f"{m.name} is a quantized model, which cannot be trained here; load a float "
            "checkpoint (safetensors), or a GGUF file, which conceptvec dequantizes to float32"
        )
    if not owned:
        hf = copy.deepcopy(hf)
    if dtype is None and any(p.dtype in (torch.float16, torch.bfloat16) for p in hf.parameters()):
        if not torch.cuda.is_available():
            hf = hf.float()  # half-precision training on CPU is slow and lossy
    if torch.cuda.is_available():
        hf = hf.cuda()
    tok = m.tokenizer
    if tok is None:
        raise UnlearningError(f"{m.name} has no tokenizer; pass a folder with tokenizer files")
    return m, hf, tok


# ------------------------------------------------------------------------------ concept
def resolve_concept(
    concept: Any, concepts: Any = None
) -> tuple[ConceptEntry, list[ConceptEntry], str | None, NeuronId | None]:
    """Return (the concept's entry, the other concepts, the file it came from, its vector
    when the concept came as a :class:`ConceptVector`)."""
    pool: list[ConceptEntry] = []
    source = None
    if concepts is not None:
        pool = list(concepts) if isinstance(concepts, list) else read_concepts(concepts)
        source = None if isinstance(concepts, list) else str(concepts)
    neuron = None
    if isinstance(concept, ConceptVector):
        neuron, concept = NeuronId.parse(concept.neuron), concept.concept
    if isinstance(concept, ConceptEntry):
        return concept, [e for e in pool if e is not concept], source, neuron
    if isinstance(concept, (str, os.PathLike)) and Path(concept).suffix.lower() == ".json":
        if Path(concept).is_file():
            entries = read_concepts(concept)
            if len(entries) != 1:
                raise UnlearningError(
                    f"{concept} holds {len(entries)} concepts; pass it as concepts=/--concepts "
                    "and name one with concept=/--concept"
                )
            return (
                entries[0],
                [e for e in pool if e.concept != entries[0].concept],
                str(concept),
                neuron,
            )
    if not isinstance(concept, str) or not concept.strip():
        raise UnlearningError(
            f"concept must be a name, a ConceptVectors JSON file, a ConceptEntry or a "
            f"ConceptVector, not {type(concept).__name__}"
        )
    match = [e for e in pool if e.concept.lower() == concept.strip().lower()]
    if pool and not match:
        names = listing([e.concept for e in pool])
        raise UnlearningError(f"no concept {concept!r} in {source or 'concepts'}; it has {names}")
    if match:
        return match[0], [e for e in pool if e is not match[0]], source, neuron
    return ConceptEntry(concept=concept.strip()), [], None, neuron


def check_inputs(
    method: Any, neuron: Any, entry: ConceptEntry, found: NeuronId | None, forget_file: Any
) -> None:
    """Raise what :func:`resolve_neuron` and the data would raise after the model loads,
    before it does: a vector method without a vector, ``"file"`` without Layer/Dim, a
    malformed id, a concept with nothing to unlearn from."""
    if method.vector and neuron is None and found is None:
        raise UnlearningError(
            f"method {method.name} needs the concept vector: pass neuron='L29.1518' (--neuron), "
            "'find' to run the finder, or 'file' for the record's Layer/Dim"
        )
    if isinstance(neuron, str) and neuron != "find":
        resolve_neuron(neuron, entry, found, None)
    has_data = entry.qa or entry.wikipedia_content or entry.text_completion or forget_file
    if method.name != "edit" and not has_data:
        raise UnlearningError(
            f"concept {entry.concept!r} has no questions or text to unlearn: pass the concepts "
            "file that holds it (--concepts FILE, or a packaged name: conceptvectors-dev) or "
            "forget data (--forget FILE)"
        )


def resolve_neuron(neuron: Any, entry: ConceptEntry, found: NeuronId | None, find):
    """Return the concept vector's :class:`NeuronId` (``neuron``: an id, ``"file"`` for the
    record's Layer/Dim, ``"find"`` to run ``find()``), or None when none was asked for."""
    if neuron is None:
        return found
    if isinstance(neuron, ConceptVector):
        return NeuronId.parse(neuron.neuron)
    if neuron == "file":
        if entry.layer is None or entry.dim is None:
            raise UnlearningError(f"the record of {entry.concept!r} has no Layer/Dim")
        return NeuronId(entry.layer, entry.dim)
    if neuron == "find":
        return find()
    return NeuronId.parse(neuron)


# --------------------------------------------------------------------------------- data
@dataclass
class Sets:
    """Tokenised training sets and what they hold."""

    forget: list[Example]
    retain: list[Example]
    idk: list[Example] | None
    spec: DataSpec
    heldout: list[str] = field(default_factory=list)
    heldout_unrelated: list[str] = field(default_factory=list)


def build_sets(
    target: Any,
    entry: ConceptEntry,
    others: list[ConceptEntry],
    *,
    forget_file: Any,
    retain_file: Any,
    forget_qa: str,
    holdout: float,
    seed: int,
    max_length: int,
    rows: int,
    dpo: bool,
    chat: bool | None,
    max_new_tokens: int,
) -> Sets:
    """Return the forget and retain sets of a run (see :mod:`.data`)."""
    from conceptvec.qa import answer

    if forget_qa not in ("heldout", "all", "none"):
        raise UnlearningError(f"forget_qa must be heldout, all or none, not {forget_qa!r}")
    tk = Tokenising(target, max_length, chat)
    spec = DataSpec(qa_split=forget_qa)
    hold = holdout if forget_qa == "heldout" else 0.0
    train_q, held_q = split_qa(entry.qa, hold, seed)
    train_u, held_u = split_qa(entry.unrelated_qa, hold, seed + 1)
    if forget_qa == "none":
        train_q, held_q = [], [q.strip() for q in entry.qa if q.strip()]
    spec.heldout_qa, spec.heldout_unrelated_qa = held_q, held_u

    f_texts = chunk_text(entry.wikipedia_content) if entry.wikipedia_content.strip() else []
    f_pairs: list[tuple[str, str]] = []
    if forget_file is not None:
        texts, f_pairs = read_pairs(forget_file)
        f_texts += texts
        spec.sources.append(f"forget: {forget_file}")
    r_texts = [c for e in others for c in chunk_text(e.wikipedia_content)]
    r_pairs: list[tuple[str, str]] = []
    if retain_file is not None:
        texts, r_pairs = read_pairs(retain_file)
        r_texts += texts
        spec.sources.append(f"retain: {retain_file}")
    if len(r_texts) > max(rows, 64):  # only what the run can use
        r_texts = random.Random(seed).sample(r_texts, max(rows, 64))

    unanswered = [q for q in train_q] + [q for q in train_u]
    if unanswered:  # minutes on a CPU: say so (the CLI shows these lines)
        logger.info("answering %d training questions with the model", len(unanswered))
    answers = (
        answer(target, unanswered, chat=tk.chat, max_new_tokens=max_new_tokens)
        if unanswered
        else []
    )
    f_pairs += list(zip(train_q, answers[: len(train_q)]))
    r_pairs += list(zip(train_u, answers[len(train_q) :]))
    forget = [e for e in map(tk.text, f_texts) if e] + [tk.qa(q, a) for q, a in f_pairs]
    retain = [e for e in map(tk.text, r_texts) if e] + [tk.qa(q, a) for q, a in r_pairs]
    spec.forget_text, spec.retain_text = len(f_texts), len(r_texts)
    spec.forget_qa, spec.retain_qa = [q for q, _ in f_pairs], [q for q, _ in r_pairs]
    if not forget:
        raise UnlearningError(
            f"the forget set of {entry.concept!r} is empty: its record has no "
            "wikipedia_content or QA; pass a forget file (--forget FILE) or a concepts file"
        )
    idk = None
    if dpo:
        forget = [halves(e) for e in forget]
        idk = [
            Example(e.prompt, _idk_tokens(tk, a, e), e.kind) for e in forget for a in IDK_ANSWERS
        ]
    return Sets(forget, retain, idk, spec, held_q, held_u)


def _idk_tokens(tk: Tokenising, text: str, ex: Example) -> list[int]:
    sep = "" if (tk.chat and ex.kind == "qa") else " "
    ids = list(tk.tok(sep + text, add_special_tokens=False)["input_ids"])
    return ids + ([tk.eos] if tk.eos is not None else [])
