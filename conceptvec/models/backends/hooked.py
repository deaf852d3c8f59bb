"""TransformerLens' classic ``HookedTransformer`` (TransformerLens 2.x and 3.x) as a source.

A HookedTransformer keeps its weights in TransformerLens' own layout (``blocks.L.mlp.W_in``
``[d_model, d_mlp]``, ``W_gate``, ``W_out`` ``[d_mlp, d_model]``, ``unembed.W_U``
``[d_model, d_vocab]``, ``ln_final.w``). :class:`HookedTransformerReader` presents them under
the Hugging Face state-dict names the family's :class:`ArchSpec` expects, with the HF
meaning, so :class:`Model` and decoding treat the object like any other checkpoint. MLP
matrices and (but for the last case below) the unembedding are transposed views of the live
parameters, not copies.

What TransformerLens' weight processing changes, and how it comes out here:

- ``fold_ln=True`` (the ``from_pretrained`` default) multiplies the final norm's gain into
  ``W_U`` and leaves ``ln_final`` without a weight. The reader then has no final-norm gain,
  so decoding applies none: ``W_U`` already carries it, and the scores are the same as the
  original model's. It also multiplies each block's pre-MLP norm gain into ``W_in`` and
  ``W_gate``, which cannot be undone: ``up``/``gate`` neurons of a folded model are the HF
  rows times that gain (what the neuron reads from the *normalised* residual), so their
  tokens can differ from the unfolded model's. ``down`` is not affected.
- ``center_writing_weights`` and the centring done by ``fold_ln`` on LayerNorm models remove
  the mean over ``d_model``, which the final LayerNorm removes anyway; ``center_unembed``
  shifts every token's score by the same amount. Neither changes which tokens come out.
- TransformerLens' Gemma conversion stores Gemma's RMSNorm gains as ``1 + w``, as llama.cpp
  does: the reader says so (``effective_gains``), and :meth:`Model.norm_gain` then adds
  nothing. A folded final gain is already in ``W_U``, as for every family.
- OLMo 2/3 are post-norm: TransformerLens' ``ln2`` there is the norm on the MLP output, read
  as the spec's ``mlp_out_norm``. Folding is not valid for them, and a folded one is refused.
- With ``fold_ln`` on a LayerNorm model, TransformerLens moves the final LayerNorm's bias
  into ``unembed.b_U``, which conceptvec has no slot for (only probabilities, ``probs=True``,
  use the bias). The reader then presents an equivalent pair: ``lm_head.weight`` =
  ``(W_U - mean_d(W_U) + b_U / d_model)^T`` and a final-norm bias of ones. For the centred
  vectors a LayerNorm produces, this gives exactly ``W_U`` for scores and ``W_U + b_U`` for
  probabilities. The unembedding is then a float32 copy, not a view.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import torch

from conceptvec.errors import NoWeightsError, UnsupportedArchitectureError
from conceptvec.models.arch import ArchSpec, hf_architectures, spec_for_model_type
from conceptvec.models.model import Model, local_tokenizer_loader
from conceptvec.types import ModelSource, Tokenizer

log = logging.getLogger(__name__)

NATIVE_ARCHITECTURES = (None, "", "neel", "mingpt")
"""Models TransformerLens built or trained itself (no HF architecture): the spec is
inferred from the config's structure (gated RMSNorm -> llama, plain LayerNorm -> gpt2)."""


def _norm_type(cfg: Any) -> str:
    return str(getattr(cfg, "normalization_type", None) or "")


def model_type_for(cfg: Any) -> str:
    """Return the HF ``model_type`` whose spec fits a HookedTransformer config."""
    arch = getattr(cfg, "original_architecture", None)
    known = hf_architectures()  # ``cfg.original_architecture`` -> its model_type
    if arch in known:
        return known[arch]
    norm = _norm_type(cfg)
    act = str(getattr(cfg, "act_fn", None) or "")
    if arch in NATIVE_ARCHITECTURES and not getattr(cfg, "use_normalization_before_and_after", 0):
        if getattr(cfg, "gated_mlp", False) and norm in ("RMS", "RMSPre"):
            return "llama"
        if not getattr(cfg, "gated_mlp", False) and norm in ("LN", "LNPre"):
            if not act.startswith("solu"):
                return "gpt2"
    what = f"original_architecture {arch!r}" if arch else "a config without original_architecture"
    raise UnsupportedArchitectureError(
        f"cannot decode a HookedTransformer with {what} (normalization {norm or None}, "
        f"gated_mlp={bool(getattr(cfg, 'gated_mlp', False))}, act_fn={act or None}); "
        f"supported architectures: {', '.join(known)}, and TransformerLens-native "
        "models with a gated RMSNorm or plain LayerNorm MLP"
    )


def _check(cfg: Any, spec: ArchSpec) -> None:
    """Refuse HookedTransformers whose weights do not fit the spec's reading of them."""
    if getattr(cfg, "attn_only", False):
        raise NoWeightsError("this HookedTransformer is attention-only: it has no MLP neurons")
    if (getattr(cfg, "num_experts", None) or 0) > 1:
        raise UnsupportedArchitectureError(
            "mixture-of-experts HookedTransformers are not supported (no single MLP per layer)"
        )
    if getattr(cfg, "load_in_4bit", False):
        raise NoWeightsError(
            "this HookedTransformer holds 4-bit quantized weights, which conceptvec cannot "
            "read; load it without load_in_4bit, or pass the HF checkpoint"
        )
    if bool(getattr(cfg, "gated_mlp", False)) != spec.gated:
        raise UnsupportedArchitectureError(
            f"this HookedTransformer has gated_mlp={getattr(cfg, 'gated_mlp', False)} but a "
            f"{spec.family} model {'has' if spec.gated else 'has no'} gated MLP"
        )
    norm = _norm_type(cfg)
    if spec.post_norm and norm.endswith("Pre"):
        raise UnsupportedArchitectureError(
            f"this {spec.family} HookedTransformer had its norms folded (fold_ln), which is not "
            "valid for post-norm models (the MLP's output norm is gone); load it with "
            "fold_ln=False"
        )
    layernorm = spec.centers
    wanted = ("LN", "LNPre") if layernorm else ("RMS", "RMSPre")
    if norm not in wanted or (layernorm and getattr(cfg, "final_rms", False)):
        raise UnsupportedArchitectureError(
            f"this HookedTransformer has normalization_type={norm or None} (final_rms="
            f"{bool(getattr(cfg, 'final_rms', False))}), but {spec.family} models use "
            f"{' or '.join(wanted)} throughout"
        )


class HookedTransformerReader:
    """Present a ``HookedTransformer``'s weights under HF state-dict names, in HF layout.

    ``ln_folded`` tells whether TransformerLens folded the norm gains into the neighbouring
    weights (``fold_ln``): then there is no final-norm gain to read (it is in ``W_U``) and
    ``up``/``gate`` rows carry the pre-MLP norm gain.
    """

    kind = "hooked_transformer"
    effective_gains = True  # TransformerLens stores Gemma's norm gains as 1 + w
    tied = None

    def __init__(self, model: Any, spec: ArchSpec):
        self.model = model
        self.spec = spec
        self.prefix = spec.prefixes[0]
        cfg = model.cfg
        self.ln_folded = _norm_type(cfg).endswith("Pre")
        self._tl: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
        if "unembed.W_U" not in self._tl:
            raise NoWeightsError("this HookedTransformer has no unembed.W_U")
        self._device = self._tl["unembed.W_U"].device
        self._map: dict[str, tuple[str, str]] = {}
        p = self.prefix
        for layer in range(int(cfg.n_layers)):
            for matrix, tl_name in (("up", "W_in"), ("gate", "W_gate"), ("down", "W_out")):
                if matrix in spec.mlp:
                    relative, layout = spec.mlp[matrix]
                    # TransformerLens stores both MLP matrices as [in, out] (``in_out``).
                    op = "T" if layout == "out_in" else "same"
                    self._add(p + relative.format(layer=layer), f"blocks.{layer}.mlp.{tl_name}", op)
            if spec.mlp_out_norm:
                out_norm = "ln2" if spec.post_norm else "ln2_post"
                self._add(
                    p + spec.mlp_out_norm.format(layer=layer),
                    f"blocks.{layer}.{out_norm}.w",
                    "same",
                )
        if spec.final_norm:
            self._add(p + spec.final_norm, "ln_final.w", "same")
            if spec.norm_style == "layernorm":
                bias = (p + spec.final_norm).replace(".weight", ".bias")
                if "ln_final.b" in self._tl:
                    self._add(bias, "ln_final.b", "same")
                elif "ln_final.w" not in self._tl and self._b_u_matters():
                    self._map[bias] = ("unembed.b_U", "ones")
                    self._map[spec.unembed] = ("unembed.W_U", "T_with_b_U")
        if spec.unembed not in self._map:
            self._add(spec.unembed, "unembed.W_U", "T")

    def _add(self, key: str, tl_key: str, op: str) -> None:
        if tl_key in self._tl:
            self._map[key] = (tl_key, op)

    def has(self, key: str) -> bool:
        """Return True if the model has a weight that HF would call ``key``."""
        return key in self._map

    def keys(self) -> list[str]:
        """Return every HF key the reader presents."""
        return list(self._map)

    def shape(self, key: str) -> tuple[int, ...]:
        """Return the HF shape of ``key``."""
        tl_key, op = self._entry(key)
        shape = tuple(self._tl[tl_key].shape)
        if op in ("T", "T_with_b_U"):
            return shape[::-1]
        if op == "ones":
            return (int(self._tl["unembed.W_U"].shape[0]),)
        return shape

    def dtype(self, key: str) -> str:
        """Return the dtype name of the parameter behind ``key``."""
        tl_key, _ = self._entry(key)
        return str(self._tl[tl_key].dtype).replace("torch.", "")

    def is_quantized(self, key: str) -> bool:  # noqa: ARG002 - the WeightReader protocol
        """Return False: the model's parameters are read as they are."""
        return False

    def get(self, key: str, pin_memory: bool = False) -> torch.Tensor:  # noqa: ARG002
        """Return ``key`` with its HF layout (a view of the live weight when it can be; edits
        to the model show through; ``pin_memory`` is ignored)."""
        tl_key, op = self._entry(key)
        w = self._tl[tl_key].detach()
        if op == "T":
            w = w.T
        elif op == "T_with_b_U":
            w = self._unembed_with_b_u()
        elif op == "ones":
            w = torch.ones(self._tl["unembed.W_U"].shape[0], device=w.device)
        return w if w.device == self._device else w.to(self._device)

    def _entry(self, key: str) -> tuple[str, str]:
        try:
            return self._map[key]
        except KeyError:
            raise KeyError(f"{key} is not in this HookedTransformer") from None

    def _b_u_matters(self) -> bool:
        """Return True if ``unembed.b_U`` is not constant (a constant changes no probability)."""
        b_u = self._tl.get("unembed.b_U")
        return b_u is not None and bool((b_u.detach() - b_u.detach()[0]).abs().max() > 0)

    def _unembed_with_b_u(self) -> torch.Tensor:
        """Return ``[vocab, d_model]`` ``(P W_U + 1 b_U^T / d_model)^T``, P centring d_model.

        With the final-norm bias of ones presented beside it, a centred (LayerNorm) vector
        ``x`` scores ``x W_U`` and ``(x + 1)`` scores ``x W_U + b_U``: TransformerLens' logits.
        """
        w_u = self._tl["unembed.W_U"].detach().float()  # [d_model, vocab]
        b_u = self._tl["unembed.b_U"].detach().float()
        return (w_u - w_u.mean(0, keepdim=True) + b_u[None, :] / w_u.shape[0]).T


def from_hooked_transformer(model: ModelSource, *, tokenizer: Tokenizer | None = None) -> Model:
    """Return a :class:`Model` over a live TransformerLens ``HookedTransformer``.

    The spec comes from ``model.cfg.original_architecture`` (``LlamaForCausalLM`` -> llama,
    ``GPT2LMHeadModel`` -> gpt2, ``Gemma2ForCausalLM`` -> gemma, ...); the tokenizer is
    ``tokenizer``, else the model's own. The result reads weights only: there is no HF
    module behind it, so :attr:`Model.hf` is unavailable.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise NoWeightsError(f"{type(model).__name__} has no cfg; is it a HookedTransformer?")
    model_type = model_type_for(cfg)
    spec = spec_for_model_type(model_type)
    _check(cfg, spec)
    reader = HookedTransformerReader(model, spec)
    name = str(getattr(cfg, "model_name", "") or type(model).__name__)
    if reader.ln_folded and spec.gated:
        log.warning(
            "%s was loaded with fold_ln, so its up/gate rows include each block's pre-MLP norm "
            "gain (down columns are unaffected); load it with fold_ln=False to decode the "
            "original up/gate rows",
            name,
        )
    cap = getattr(cfg, "output_logits_soft_cap", None)
    arch = getattr(cfg, "original_architecture", None)
    config = SimpleNamespace(
        model_type=model_type,
        architectures=[arch] if arch else [],
        hidden_size=int(cfg.d_model),
        intermediate_size=int(cfg.d_mlp),
        num_hidden_layers=int(cfg.n_layers),
        vocab_size=int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab),
        tie_word_embeddings=False,  # W_U is its own parameter in TransformerLens
        final_logit_softcapping=float(cap) if cap and cap > 0 else None,
        n_ctx=int(cfg.n_ctx) if getattr(cfg, "n_ctx", None) else None,
        _name_or_path=name,
        **{spec.eps_key: float(cfg.eps)},
    )
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    tokenizer_name = getattr(cfg, "tokenizer_name", None)

    return Model(
        name=name,
        spec=spec,
        config=config,
        reader=reader,
        source="object",
        location="<in memory>",
        tokenizer=tokenizer,
        tokenizer_loader=(
            local_tokenizer_loader(tokenizer_name) if tokenizer is None and tokenizer_name else None
        ),
    )
