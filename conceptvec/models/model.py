"""``Model``: one handle on a language model's weights, tokenizer and (lazily) its torch module.

Everything that needs only weights (decoding, search, atlases) goes through
:meth:`Model.neurons`, :meth:`Model.unembedding` and the norm gains, which read one tensor at
a time from disk (or from the live module when the user handed us one). The full torch model
is built only when something asks for :attr:`Model.hf` (forward passes, interventions).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch

from conceptvec.errors import CorruptWeightsError, NoWeightsError
from conceptvec.neurons import NeuronId, check_matrix
from conceptvec.types import Tokenizer

from . import disk_cache
from .arch import ArchSpec, Dims, dims_from_config, text_config
from .readers import WeightReader

log = logging.getLogger(__name__)


class Model:
    """A language model as conceptvec sees it: a spec, dims, a weight reader and a tokenizer.

    Build one with :func:`conceptvec.load`; do not call the constructor directly.
    """

    def __init__(
        self,
        *,
        name: str,
        spec: ArchSpec,
        config: Any,
        reader: WeightReader,
        source: str,
        location: str,
        revision: str | None = None,
        tokenizer_loader: Callable[[], Tokenizer] | None = None,
        hf_loader: Callable[[], torch.nn.Module] | None = None,
        hf_model: torch.nn.Module | None = None,
        tokenizer: Tokenizer | None = None,
    ):
        self.name = name
        """What the user asked for (alias, hub id, path or class name)."""
        self.spec = spec
        self.config = config
        self.reader = reader
        self.source = source
        """Kind of source: ``alias``, ``hub``, ``folder``, ``gguf`` or ``object``."""
        self.location = location
        """Where the weights are: a folder, a file or ``<in memory>``."""
        self.revision = revision
        self._tokenizer = tokenizer
        self._tokenizer_loader = tokenizer_loader
        self._hf = hf_model
        self._hf_loader = hf_loader
        self._unembedding: torch.Tensor | None = None
        self._texts: tuple[Tokenizer, int, list[str]] | None = None  # (tokenizer, its size, texts)
        self.prefix = self._find_prefix()
        self.dims = self._read_dims()
        if hf_model is not None:
            self._share_tokenizer()

    # ------------------------------------------------------------------ layout
    def _find_prefix(self) -> str:
        probe = self.spec.mlp["down"][0].format(layer=0, expert=0)
        stacked = self.spec.stacked.get("down", ("\0",))[0].format(layer=0)
        for prefix in self.spec.prefixes:
            if self.reader.has(prefix + probe) or self.reader.has(prefix + stacked):
                return prefix
        raise NoWeightsError(
            f"{self.location} has no MLP weights where a {self.spec.family} checkpoint keeps "
            f"them (looked for {' or '.join(p + probe for p in self.spec.prefixes)}); "
            "is this a complete causal-LM checkpoint?"
        )

    def weight_key(self, logical: str, layer: int | None = None, expert: int | None = None) -> str:
        """Return the HF state-dict name of a logical weight (``up``, ``final_norm``, ...):
        what every reader presents it as ("" for a norm the family does not have)."""
        if logical in self.spec.mlp:
            return self.prefix + self.spec.mlp[logical][0].format(layer=layer, expert=expert)
        if logical == "unembed":
            key = self.spec.unembed
            return key if self.reader.has(key) else self.spec.renamed.get(key, key)
        relative = {
            "final_norm": self.spec.final_norm,
            "embed": self.spec.embed,
            "mlp_out_norm": self.spec.mlp_out_norm,
        }[logical]
        return self.prefix + relative.format(layer=layer) if relative else ""

    def _is_tied(self) -> bool:
        if self.reader.tied is not None:  # the source itself says (a GGUF)
            return self.reader.tied or not self.reader.has(self.weight_key("unembed"))
        if self.reader.has(self.weight_key("unembed")):
            return dims_from_config(self.config).tied
        if not dims_from_config(self.config).tied and self.reader.has(self.weight_key("embed")):
            # transformers would give the model a random head while we decoded the embedding
            raise CorruptWeightsError(
                f"{self.location} has no {self.weight_key('unembed')}, and its config does not "
                "tie it to the embedding (tie_word_embeddings is false); the checkpoint is "
                "incomplete: re-download it"
            )
        return True

    def mlp_place(
        self, matrix: str, layer: int, expert: int | None
    ) -> tuple[str, int | None, str, tuple[int, int] | None]:
        """Return ``(key, index into its experts axis or None, layout, (block, blocks) or None)``
        of one matrix: its own key, or a live mixture-of-experts model's stacked parameter."""
        key = self.weight_key(matrix, layer, expert)
        if matrix in self.spec.stacked and not self.reader.has(key):
            relative, block, blocks = self.spec.stacked[matrix]
            return self.prefix + relative.format(layer=layer), expert, "out_in", (block, blocks)
        return key, None, self.spec.mlp[matrix][1], self.spec.fused.get(matrix)

    def _read_dims(self) -> Dims:
        dims = dims_from_config(self.config, self.spec.experts_key)
        tied = self._is_tied()
        self._head_key = self.weight_key("embed") if tied else self.weight_key("unembed")
        if not self.reader.has(self._head_key):
            raise NoWeightsError(
                f"{self.location} has neither an unembedding ({self.weight_key('unembed')}) nor an "
                f"embedding ({self.weight_key('embed')}); is this a complete causal-LM checkpoint?"
            )
        head_shape = tuple(self.reader.shape(self._head_key))
        if len(head_shape) != 2 or head_shape[1] != dims.d_model or head_shape[0] < 1:
            raise CorruptWeightsError(
                f"{self.location}: unembedding has shape {head_shape} but the config says "
                f"d_model={dims.d_model}; the config and weights do not belong together"
            )
        if head_shape[0] < dims.vocab:
            raise CorruptWeightsError(
                f"{self.location}: {self._head_key} has {head_shape[0]} rows but the config says "
                f"vocab_size={dims.vocab}; every token needs a row: the config and weights do "
                "not belong together (re-download the checkpoint)"
            )
        self._check_layers(dims)
        return Dims(
            dims.n_layers,
            dims.d_model,
            dims.d_mlp,
            int(head_shape[0]),
            tied,
            dims.logit_softcap,
            dims.n_experts,
        )

    def _check_layers(self, dims: Dims) -> None:
        """Raise unless the first and last layer the config declares hold MLP weights of the
        declared size (so a config that claims 10^8 layers or neurons allocates nothing)."""
        last = dims.n_experts - 1 if dims.n_experts else None
        for layer in sorted({0, dims.n_layers - 1}):
            key, stack, _, _ = self.mlp_place("down", layer, last)
            if not self.reader.has(key):
                raise CorruptWeightsError(
                    f"{self.location}: the config says {dims.n_layers} layers"
                    f"{f' of {dims.n_experts} experts' if dims.n_experts else ''} but there is "
                    f"no {key}; the config and weights do not belong together"
                )
            shape = tuple(self.reader.shape(key))
            if stack is not None:  # [experts, d_model, d_mlp]
                if len(shape) != 3 or shape[0] != dims.n_experts:
                    raise CorruptWeightsError(
                        f"{self.location}: {key} has shape {shape} but the config says "
                        f"{dims.n_experts} experts; the config and weights disagree"
                    )
                shape = shape[1:]
            if sorted(shape) != sorted((dims.d_mlp, dims.d_model)):
                raise CorruptWeightsError(
                    f"{self.location}: {key} has shape {shape} but the config says d_mlp="
                    f"{dims.d_mlp}, d_model={dims.d_model}; the config and weights disagree"
                )

    # ----------------------------------------------------------------- weights
    def neurons(
        self, layer: int, matrix: str, pin_memory: bool = False, expert: int | None = None
    ) -> torch.Tensor:
        """Return ``[d_mlp, d_model]``: row i is neuron i's vector in ``matrix`` of ``layer``
        (of ``expert`` in a mixture-of-experts model, which needs one).

        ``up``/``gate`` rows are what a neuron reads from the residual stream; ``down``
        columns (returned here as rows) are what it writes. Values are as stored (dtype);
        no norm is folded in. ``pin_memory`` asks for page-locked memory (for async copies
        to a GPU) where the reader can read straight into it.
        """
        matrix = check_matrix(matrix, self.spec.gated)
        self.dims.check(NeuronId(layer, 0, expert))
        key, stack, layout, part = self.mlp_place(matrix, layer, expert)
        if not self.reader.has(key):
            raise NoWeightsError(
                f"{self.location} has no tensor {key}; the checkpoint is incomplete"
            )
        w = self.reader.get(key, pin_memory=True) if pin_memory else self.reader.get(key)
        if stack is not None:
            w = w[stack]
        reads = matrix != "down"
        w = w if reads == (layout == "out_in") else w.T
        if part is not None:  # one block of a stacked tensor (a view, not a copy)
            block, blocks = part
            size = w.shape[0] // blocks
            w = w[block * size : (block + 1) * size]
        if tuple(w.shape) != (self.dims.d_mlp, self.dims.d_model):
            raise CorruptWeightsError(
                f"{key} has shape {tuple(w.shape)}, expected neurons x d_model = "
                f"({self.dims.d_mlp}, {self.dims.d_model}); the config and weights disagree"
            )
        return w

    def neuron_vector(self, neuron: NeuronId | str, matrix: str = "down") -> torch.Tensor:
        """Return ``[d_model]``: one neuron's vector (a down column or an up/gate row)."""
        n = self.dims.check(neuron)
        return self.neurons(n.layer, matrix, expert=n.expert)[n.index]

    def unembedding(self) -> torch.Tensor:
        """Return ``[vocab, d_model]``, the LM head (the embedding when tied). Cached.

        A quantized GGUF head is dequantized once and kept on disk as float32 (see
        :mod:`conceptvec.models.disk_cache`): dequantizing Gemma 3's 262k-token head takes
        3 s, reading it back a tenth of that.
        """
        if self._unembedding is None:
            key = self._head_key
            if self.reader.is_quantized(key):
                shape = (self.dims.vocab, self.dims.d_model)
                self._unembedding = disk_cache.cached_tensors(
                    self,
                    "unembedding",
                    lambda: {"w": self.reader.get(key)},
                    {"w": (shape, torch.float32)},
                    depends=("conceptvec.models.gguf_file", "gguf.quants"),
                )["w"]
            else:
                self._unembedding = self.reader.get(key)
        return self._unembedding

    def token_text(self) -> Callable[[int], str]:
        """Return a function from a token id to its display text.

        For a model read from files it indexes :meth:`token_texts` (cached: no tokenizer is
        loaded once they are); for a live model it asks the tokenizer, one id at a time.
        """
        if disk_cache.weights_stamp(self) is None:
            from conceptvec.tokens import token_text

            return token_text(self.tokenizer)
        return self.token_texts().__getitem__

    def token_texts(self) -> list[str]:
        """Return the display text of every token id (:mod:`conceptvec.tokens`), ``[vocab]``.

        Built from the tokenizer once, then kept in memory and on disk beside the weights'
        stamp, so a later process needs neither the tokenizer nor transformers.
        """
        from conceptvec import tokens

        if disk_cache.weights_stamp(self) is None:  # a live model: kept for its tokenizer
            tok = self.tokenizer
            size = len(tok) if tok is not None else 0  # tokens can be added to a tokenizer
            if self._texts is None or self._texts[0] is not tok or self._texts[1] != size:
                self._texts = (tok, size, tokens.token_text(tok).many(range(self.dims.vocab)))
            return self._texts[2]

        def compute() -> list[str]:
            if self.tokenizer is None:
                raise NoWeightsError(f"{self.name} has no tokenizer")  # never cache ids
            return tokens.token_text(self.tokenizer).many(range(self.dims.vocab))

        try:
            return disk_cache.cached_texts(
                self, "token-texts", compute, self.dims.vocab, depends=(tokens.__name__,)
            )
        except NoWeightsError:
            return tokens.token_text(None).many(range(self.dims.vocab))

    def norm_gain(self, key: str) -> torch.Tensor | None:
        """Return ``[d_model]`` float32: the gain the norm whose weight is ``key`` multiplies
        by, or None when the checkpoint has no such weight.

        The one place Gemma's ``(1 + w)`` is handled: transformers stores ``w`` and the
        spec's :attr:`ArchSpec.gain_offset` is added to it; llama.cpp and TransformerLens
        store the gain itself (:attr:`WeightReader.effective_gains`).
        """
        if not key or not self.reader.has(key):
            return None
        w = self._vector(key)
        if self.spec.gain_offset and not self.reader.effective_gains:
            w = w + self.spec.gain_offset
        return w

    def final_norm_gain(self) -> torch.Tensor | None:
        """Return the final norm's effective gain ``[d_model]`` (1 + w for Gemma), or None."""
        return self.norm_gain(self.weight_key("final_norm")) if self.spec.final_norm else None

    def final_norm_bias(self) -> torch.Tensor | None:
        """Return the final LayerNorm's bias ``[d_model]`` (GPT-2), or None."""
        if self.spec.norm_style != "layernorm":
            return None
        key = self.weight_key("final_norm").replace(".weight", ".bias")
        return self._vector(key) if self.reader.has(key) else None

    def _vector(self, key: str) -> torch.Tensor:
        """Return weight ``key`` as float32 ``[d_model]``, or raise if it has another shape."""
        w = self.reader.get(key)
        if tuple(w.shape) != (self.dims.d_model,):
            raise CorruptWeightsError(
                f"{self.name}: {key} has shape {tuple(w.shape)}, not [{self.dims.d_model}] "
                "(d_model); the checkpoint is damaged: re-download it"
            )
        return w.float()

    @property
    def has_mlp_out_norm(self) -> bool:
        """True when this checkpoint has a norm on the MLP output (folded into ``down``)."""
        return bool(self.spec.mlp_out_norm) and self.reader.has(self.weight_key("mlp_out_norm", 0))

    def mlp_out_gain(self, layer: int) -> torch.Tensor | None:
        """Return the gain of the norm on this layer's MLP output (Gemma 2/3, OLMo 2), or None."""
        if not self.spec.mlp_out_norm:
            return None
        return self.norm_gain(self.weight_key("mlp_out_norm", layer))

    # ----------------------------------------------------- tokenizer and module
    @property
    def tokenizer(self) -> Any:
        """The HF tokenizer, loaded on first use; None when the checkpoint has none."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            loader, self._tokenizer_loader = self._tokenizer_loader, None
            try:
                self._tokenizer = loader()
            except Exception as e:  # a checkpoint without tokenizer files is still decodable
                log.warning(
                    "no tokenizer for %s (%s); tokens are shown as ids",
                    self.name,
                    str(e).splitlines()[0][:120],
                )
            size = len(self._tokenizer) if self._tokenizer is not None else 0
            if size > self.dims.vocab:
                self._tokenizer, self._tokenizer_loader = None, loader  # refused every time
                raise CorruptWeightsError(
                    f"{self.name}: the tokenizer has {size} tokens but the model's head has "
                    f"{self.dims.vocab} rows; token ids past {self.dims.vocab - 1} have no "
                    "row: use the tokenizer that belongs to these weights"
                )
            if self._tokenizer is not None and self._hf is not None:
                self._share_tokenizer()
        return self._tokenizer

    def _share_tokenizer(self) -> None:
        """Remember this model's tokenizer (or its loader) for its torch module, so that
        ``load(model.hf)`` keeps it."""
        source: tuple[Tokenizer | None, Callable[[], Tokenizer] | None] | None = (
            (self._tokenizer, None) if self._tokenizer is not None else None
        )
        if source is None and self._tokenizer_loader is not None:
            source = (None, self._tokenizer_loader)
        if source is None or self._hf is None:
            return
        try:
            _TOKENIZERS[self._hf] = source
        except TypeError:  # a module that cannot be weakly referenced: nothing to remember
            pass

    @property
    def hf(self) -> Any:
        """The ``transformers`` causal LM, built on first use (for forward passes)."""
        if self._hf is None:
            if self._hf_loader is None:
                raise NoWeightsError(f"{self.name} cannot be built as a torch model")
            from .generation import plain_generation_config

            self._hf = self._hf_loader()
            self._hf.eval()
            plain_generation_config(self._hf)
            self._share_tokenizer()
        return self._hf

    @property
    def context_length(self) -> int | None:
        """How many positions the model can attend to (None when its config does not say)."""
        c = text_config(self.config)
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(c, name, None)
            if type(value) is int and value > 0:
                return value
        return None

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, object]:
        """Return the architecture summary that ``conceptvec info`` prints."""
        tc = text_config(self.config)
        return {
            "name": self.name,
            "source": self.source,
            "location": self.location,
            "revision": self.revision,
            "family": self.spec.family,
            "model_type": getattr(tc, "model_type", None),
            "layers": self.dims.n_layers,
            "d_model": self.dims.d_model,
            "d_mlp": self.dims.d_mlp,
            "neurons": self.dims.n_layers * self.dims.d_mlp * max(1, self.dims.n_experts),
            "vocab": self.dims.vocab,
            "tied_embeddings": self.dims.tied,
            "norm_style": self.spec.norm_style,
            "mlp": ("gated " if self.spec.gated else "") + self.spec.activation,
            "matrices": list(self.spec.matrices),
            "mlp_out_norm": self.has_mlp_out_norm,
            "logit_softcap": self.dims.logit_softcap,
            "weights_dtype": self.reader.dtype(self.mlp_place("down", 0, 0)[0]),
            **({"experts": self.dims.n_experts} if self.dims.n_experts else {}),
        }

    def __repr__(self) -> str:
        d = self.dims
        return (
            f"Model({self.name!r}, family={self.spec.family}, layers={d.n_layers}, "
            f"d_model={d.d_model}, d_mlp={d.d_mlp}, vocab={d.vocab})"
        )


# The tokenizer (or its loader) of each torch module a Model built or wrapped, so that
# ``load(load("smollm2-135m").hf)`` keeps it. Weak keys: an entry goes with its module; the
# values hold no reference to the module or the Model.
_TOKENIZERS: weakref.WeakKeyDictionary[
    torch.nn.Module, tuple[Tokenizer | None, Callable[[], Tokenizer] | None]
] = weakref.WeakKeyDictionary()


def known_tokenizer(
    module: torch.nn.Module,
) -> tuple[Tokenizer | None, Callable[[], Tokenizer] | None] | None:
    """Return ``(tokenizer, loader)`` remembered for a torch module a Model built or wrapped
    (one of the two is None), or None for a module conceptvec has not seen."""
    try:
        return _TOKENIZERS.get(module)
    except TypeError:
        return None


def local_tokenizer_loader(name: str) -> Callable[[], Tokenizer]:
    """Return a loader of ``name``'s tokenizer from local files (a folder or the HF cache)."""

    def load_tokenizer() -> Tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True)

    return load_tokenizer
