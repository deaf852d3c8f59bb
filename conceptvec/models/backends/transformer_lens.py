"""The TransformerLens backends: a classic ``HookedTransformer`` and the 3.x/4.x
``TransformerBridge``.

``blocks.L.mlp.hook_post`` is the MLP hidden activation (``act(gate) * up``) and
``blocks.L.hook_resid_post`` the residual stream after block L in both (in the bridge they
are aliases of ``blocks.L.mlp.out.hook_in`` and ``blocks.L.hook_out``). Hooks are added with
the model's own ``hooks()`` context manager, which removes them on exit. TransformerLens is
never imported here: the model object brings its own methods.

A ``HookedTransformer`` keeps its weights in TransformerLens' own layout (read by
:mod:`.hooked`); a bridge wraps a ``transformers`` model (``original_model``), whose weights
conceptvec reads directly.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import torch

from conceptvec.errors import UnsupportedModelError
from conceptvec.types import Tokenizer

from .base import Backend, Fn, Place, Point, _nothing, is_library_object

if TYPE_CHECKING:
    from conceptvec.models.arch import ArchSpec
    from conceptvec.models.model import Model

log = logging.getLogger(__name__)


def is_hooked_transformer(obj: object) -> bool:
    """Return True for a TransformerLens ``HookedTransformer`` or a subclass of it.

    Looks at class names and modules only, so it never imports ``transformer_lens``.
    """
    return any(
        cls.__name__ == "HookedTransformer"
        and (cls.__module__ or "").startswith("transformer_lens")
        for cls in type(obj).__mro__
    )


class HookedTransformerBackend(Backend):
    """A classic TransformerLens ``HookedTransformer`` (its own weights, its hook points)."""

    name = "transformer_lens"

    @classmethod
    def claims(cls, obj: object) -> bool:
        """Return True for a ``HookedTransformer`` (or a subclass)."""
        return is_hooked_transformer(obj)

    @classmethod
    def open(cls, obj: Any) -> Backend:
        """Return the backend (there is no ``transformers`` module inside)."""
        return cls(obj, None, getattr(obj, "tokenizer", None))

    def own_weights(self, tokenizer: Tokenizer | None = None) -> Model | None:
        """Return a :class:`Model` reading the HookedTransformer's weights in place."""
        from .hooked import from_hooked_transformer

        return from_hooked_transformer(self.obj, tokenizer=tokenizer)

    @property
    def module(self) -> torch.nn.Module:
        """Its embedding, which receives the token ids of every forward pass."""
        return self.obj.embed

    def point(self, spec: ArchSpec, layer: int, kind: Point) -> str:
        """Return the TransformerLens hook point name."""
        del spec
        return (
            f"blocks.{layer}.mlp.hook_post" if kind == "mlp" else f"blocks.{layer}.hook_resid_post"
        )

    def hooks(self, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]) -> Any:
        """Return the model's ``hooks(...)`` context manager with our functions on its points."""
        fwd = [(self.point(spec, layer, "mlp"), _point_fn(fn)) for layer, fn in mlp.items()]
        fwd += [(self.point(spec, layer, "resid"), _point_fn(fn)) for layer, fn in resid.items()]
        return self.obj.hooks(fwd_hooks=fwd)

    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> Any:
        """Return the model's logits for token ids (no BOS is added)."""
        del place
        if mask is None:
            return self.obj(ids, return_type="logits")
        return self.obj(ids, return_type="logits", attention_mask=mask)

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        mask: torch.Tensor,
        pad: int | None,
        place: Place = _nothing,
    ) -> torch.Tensor:
        """Return greedy continuations (TransformerLens' ``generate`` without its KV cache,
        which gives wrong tokens for bridged models). It has no padding support here, so
        padded rows run one at a time."""
        del pad, place
        if not bool((mask == 0).any()):
            return self._generate(ids, max_new_tokens)
        rows = [self._generate(row[m.bool()][None], max_new_tokens) for row, m in zip(ids, mask)]
        return torch.cat(rows, dim=0)

    def _generate(self, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        out = self.obj.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_past_kv_cache=False,
            verbose=False,
            stop_at_eos=False,
        )
        return out[:, ids.shape[1] :]


class BridgeBackend(HookedTransformerBackend):
    """A TransformerLens 3.x/4.x ``TransformerBridge`` around a ``transformers`` model."""

    @classmethod
    def claims(cls, obj: object) -> bool:
        """Return True for any other TransformerLens object (refused in :meth:`open` when
        it wraps no ``transformers`` model)."""
        return is_library_object(obj, "transformer_lens") and not is_hooked_transformer(obj)

    @classmethod
    def open(cls, obj: Any) -> Backend:
        """Return the backend over a bridge, or raise for other TransformerLens objects."""
        hf = obj.__dict__.get("original_model")
        if hf is None or not hasattr(obj, "hooks"):
            raise UnsupportedModelError(
                f"cannot use a TransformerLens {type(obj).__name__}: it has no underlying "
                "transformers model; pass a TransformerBridge (TransformerLens 3+), a "
                "HookedTransformer or the HF model itself"
            )
        return cls(obj, hf, getattr(obj, "tokenizer", None))

    def own_weights(self, tokenizer: Tokenizer | None = None) -> Model | None:
        """Return None: the weights are the ``transformers`` model's."""
        del tokenizer
        return None

    @property
    def module(self) -> torch.nn.Module:
        """The ``transformers`` model inside, which receives every pass's token ids."""
        return self.hf

    def weights_changed(self) -> str | None:
        """Return a refusal when ``enable_compatibility_mode()`` processed the weights.

        It folds each norm's gain into the next weights and sets the norm to ones, and centres
        the writing weights and the unembedding, in place. TransformerLens keeps no record of
        the gains or means it removed, so the original weights cannot be recovered.
        """
        if not self.obj.__dict__.get("_weights_processed"):
            return None
        return (
            "this TransformerBridge's weights were rewritten by enable_compatibility_mode() "
            "(norms folded into them, writing weights and unembedding centred), so they are no "
            "longer the model's own; pass the HF model, or a bridge without compatibility "
            "mode or with enable_compatibility_mode(no_processing=True)"
        )

    def rule_tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer | None:
        """Return the model's own tokenizer, read again from the files the bridge's came from.

        The bridge replaces the tokenizer it was given by a copy that adds BOS
        (TransformerLens' ``get_tokenizer_with_bos``), which the model's own Hugging Face
        settings may not do. The rule is the files' (local files only); when they cannot be
        read, the bridge's tokenizer is kept, with a warning.
        """
        name = str(getattr(tokenizer, "name_or_path", "") or "")
        if tokenizer is None or not name:
            return tokenizer
        own = _own_tokenizer(name)
        return own if own is not None else tokenizer


@functools.lru_cache(maxsize=8)
def _own_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as e:  # transformers raises many types for files it cannot read
        log.warning(
            "cannot read the tokenizer files of %s (%s); using the TransformerBridge's "
            "tokenizer, whose BOS rule may differ from the model's own",
            name,
            str(e).splitlines()[0][:120] if str(e) else type(e).__name__,
        )
        return None


def _point_fn(fn: Fn) -> Any:
    def hook_fn(activation: Any, hook: Any) -> Any:  # noqa: ARG001 (TL passes hook= by name)
        return fn(activation)

    return hook_fn
