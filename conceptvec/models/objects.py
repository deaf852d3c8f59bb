"""``unwrap``: what a live model object is, and the ``transformers`` module inside it.

The one place that knows how TransformerLens and nnsight wrap a Hugging Face model. Objects
are recognised by their class's module name, so neither library is imported unless the
user's model is one of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from conceptvec.errors import UnsupportedModelError

Backend = Literal["hf", "transformer_lens", "nnsight"]


@dataclass(frozen=True)
class Unwrapped:
    """A live model object taken apart: whose it is, the HF module inside, its tokenizer."""

    backend: Backend
    """Which library's object it is: ``hf``, ``transformer_lens`` or ``nnsight``."""
    hf: Any
    """The ``transformers`` causal LM inside (None for a classic ``HookedTransformer``,
    which keeps its own weights)."""
    tokenizer: Any
    """The wrapper's tokenizer, or None."""


def is_hooked_transformer(obj: Any) -> bool:
    """Return True for a TransformerLens ``HookedTransformer`` or a subclass of it.

    Looks at class names and modules only, so it never imports ``transformer_lens``.
    """
    return any(
        cls.__name__ == "HookedTransformer"
        and (cls.__module__ or "").startswith("transformer_lens")
        for cls in type(obj).__mro__
    )


def unwrap(obj: Any, action: str = "use {} as a model") -> Unwrapped:
    """Return what ``obj`` is: a ``transformers`` model, a TransformerLens
    ``TransformerBridge`` or ``HookedTransformer``, or an nnsight ``LanguageModel`` /
    ``TransformersModel``.

    Raises UnsupportedModelError (a TypeError) naming what can be passed instead; ``action``
    words the message (``"intervene on {}"`` says ``cannot intervene on a Linear``).
    """
    module = type(obj).__module__ or ""
    tokenizer = getattr(obj, "tokenizer", None)  # the wrappers' (a bare HF model has none)
    if is_hooked_transformer(obj):
        return Unwrapped("transformer_lens", None, tokenizer)
    if module.startswith("transformer_lens"):
        hf = obj.__dict__.get("original_model")
        if hf is None or not hasattr(obj, "hooks"):
            raise UnsupportedModelError(
                f"cannot use a TransformerLens {type(obj).__name__}: it has no underlying "
                "transformers model; pass a TransformerBridge (TransformerLens 3+), a "
                "HookedTransformer or the HF model itself"
            )
        return Unwrapped("transformer_lens", hf, tokenizer)
    if module.startswith("nnsight"):
        hf = obj.__dict__.get("_module") or obj.__dict__.get("_model")
        if hf is None or not hasattr(obj, "trace"):
            raise UnsupportedModelError(
                f"cannot use an nnsight {type(obj).__name__}: pass a LanguageModel or "
                "TransformersModel wrapping a transformers causal LM"
            )
        return Unwrapped("nnsight", hf, tokenizer)
    if getattr(obj, "config", None) is not None and hasattr(obj, "state_dict"):
        return Unwrapped("hf", obj, None)
    raise UnsupportedModelError(
        f"cannot {action.format('a ' + type(obj).__name__)}: pass an alias, path or hub id, "
        "a conceptvec Model, a transformers causal LM, a TransformerLens TransformerBridge or "
        "HookedTransformer, or an nnsight LanguageModel"
    )
