"""Architecture specs: where each family keeps its MLP matrices, final norm and unembedding.

A spec is pure data about checkpoint layout. It never infers orientation from tensor shapes
(square matrices exist); it states it. Weight keys are relative to a *prefix* that differs
between checkpoints of the same family (``model.`` for ``LlamaForCausalLM``,
``model.language_model.`` for multimodal Gemma 3, ``transformer.`` or nothing for GPT-2), so
each spec lists the prefixes it accepts and the reader picks the one the checkpoint has.

Everything conceptvec knows about a family lives in its spec: the HF state-dict names, the
GGUF tensor names, the llama.cpp and transformers architecture names that mean it, the config
defaults transformers would fill in, and how its norms work. Adding a family is adding one
:class:`ArchSpec` to :data:`SPECS` (and, for tests, a tiny config in ``tests/conftest.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from conceptvec.errors import CorruptWeightsError, UnsupportedArchitectureError
from conceptvec.neurons import NeuronId

NormStyle = Literal["rmsnorm", "rmsnorm_1p", "layernorm", "layernorm_noparam"]
Layout = Literal["out_in", "in_out"]


@dataclass(frozen=True)
class ArchSpec:
    """Where one model family keeps the weights that decoding and interventions need."""

    family: str
    """Short family name shown to users, e.g. ``llama``."""
    model_types: tuple[str, ...]
    """``config.model_type`` values that use this layout."""
    gated: bool
    """True for ``act(gate(x)) * up(x)`` MLPs; False for ``act(up(x))`` (GPT-2)."""
    mlp: dict[str, tuple[str, Layout]]
    """Matrix name -> (key relative to the prefix, with ``{layer}``; stored layout).
    ``out_in`` is ``nn.Linear``'s ``[out, in]``; ``in_out`` is GPT-2's ``Conv1D``."""
    final_norm: str | None
    """Key of the final norm's gain, or None when the norm has no parameters."""
    norm_style: NormStyle
    """``rmsnorm`` (gain w), ``rmsnorm_1p`` (Gemma: gain 1 + w), ``layernorm`` (centre,
    gain, bias) or ``layernorm_noparam`` (OLMo 1: centre only)."""
    embed: str
    """Key of the input embedding ``[vocab, d_model]``, relative to the prefix."""
    pos_embed: str | None = None
    """Key of a learned position embedding ``[positions, d_model]`` relative to the prefix
    (GPT-2's ``wpe.weight``), or None for rotary families."""
    mlp_out_norm: str | None = None
    """Key of a norm applied to the MLP's output before the residual add (Gemma 2/3 and
    OLMo 2 post-feed-forward norms), or None. Its gain is folded into ``down`` columns."""
    unembed: str = "lm_head.weight"
    """Key of the unembedding ``[vocab, d_model]``, relative to the checkpoint root."""
    prefixes: tuple[str, ...] = ("model.",)
    """Candidate prefixes for the keys above, tried in order."""
    layers_module: str = "model.layers"
    """Attribute path of the decoder layer list in the loaded HF model."""
    down_module: str = "mlp.down_proj"
    """Attribute path (within one layer) of the module whose input is the MLP hidden
    activation: where activation hooks go (in a mixture-of-experts model, the experts module
    whose output per-expert edits correct)."""
    final_norm_module: str = "model.norm"
    """Attribute path of the final norm module in the loaded HF model."""
    activation: str = "silu"
    """The MLP nonlinearity, for display."""
    gguf: dict[str, str] = field(default_factory=dict)
    """GGUF tensor names for the same logical weights (GGUF stores every matrix as
    ``[out, in]``)."""
    gguf_architectures: dict[str, str] = field(default_factory=dict)
    """llama.cpp ``general.architecture`` names of this family -> the ``model_type``
    transformers loads them as."""
    hf_architectures: dict[str, str] = field(default_factory=dict)
    """transformers class names (``config.architectures``, TransformerLens'
    ``original_architecture``) -> their ``model_type``."""
    config_defaults: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per ``model_type``: what transformers' config class fills in for fields conceptvec
    reads when ``config.json`` leaves them out (``tie_word_embeddings``, softcaps)."""
    eps_key: str = "rms_norm_eps"
    """The config field holding the norms' epsilon (1e-5 where the config has none)."""
    post_norm: bool = False
    """True when the MLP's only norm is on its output (OLMo 2/3): ``mlp_out_norm`` is then
    what TransformerLens calls ``ln2``, and folding norms into weights is not valid."""
    fused: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Matrix -> ``(block, blocks)`` when its tensor stacks ``blocks`` equal matrices along the
    neuron axis and this one is block ``block`` (Phi-3's ``gate_up_proj``: gate (0, 2), up
    (1, 2), as its MLP's ``chunk(2)`` splits them)."""
    experts_key: str | None = None
    """Mixture-of-experts models: the config field holding the experts per layer (every layer
    sparse); each expert has its own ``up, gate, down`` and ``mlp`` keys hold ``{expert}``.
    None for a dense model."""
    stacked: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    """Mixture-of-experts models: matrix -> ``(key, block, blocks)`` of the one parameter
    ``[experts, out, in]`` where a live transformers 5 model keeps every expert's matrix
    (``blocks`` stacked along ``out``, as in ``fused``), when the reader has no per-expert
    key (transformers writes per-expert keys on save)."""
    renamed: dict[str, str] = field(default_factory=dict)
    """Checkpoint key -> the key a live transformers model gives the same tensor, where they
    differ (transformers 5 loads GPT-NeoX's ``embed_out.weight`` as ``lm_head.weight``)."""

    @property
    def matrices(self) -> tuple[str, ...]:
        """The MLP matrices a neuron has in this family: ``up, gate, down`` or ``up, down``."""
        return ("up", "gate", "down") if self.gated else ("up", "down")

    @property
    def moe(self) -> bool:
        """True for a mixture-of-experts family: neurons are per expert (``L3.E5.123``)."""
        return self.experts_key is not None

    @property
    def gain_offset(self) -> float:
        """What the model adds to a stored HF norm weight ``w`` to get its gain: 1 for Gemma's
        ``(1 + w)`` RMSNorm, 0 for every other family."""
        return 1.0 if self.norm_style == "rmsnorm_1p" else 0.0

    @property
    def centers(self) -> bool:
        """True when the final norm subtracts the mean over ``d_model`` (LayerNorm models)."""
        return self.norm_style.startswith("layernorm")

    def norm_eps(self, config: Any) -> float:
        """Return the norms' epsilon from ``config`` (1e-5 when it has none, as OLMo's)."""
        value = getattr(text_config(config), self.eps_key, None)
        return 1e-5 if value is None else float(value)

    def default(self, model_type: str, name: str) -> Any:
        """Return transformers' default for config field ``name`` of ``model_type``, or raise
        AttributeError when its config class has none that conceptvec relies on."""
        defaults = self.config_defaults.get(model_type, {})
        if name in defaults:
            return defaults[name]
        raise AttributeError(name)


_GGUF_GATED = {
    "up": "blk.{layer}.ffn_up.weight",
    "gate": "blk.{layer}.ffn_gate.weight",
    "down": "blk.{layer}.ffn_down.weight",
    "final_norm": "output_norm.weight",
    "embed": "token_embd.weight",
    "unembed": "output.weight",
}

_LLAMA_MLP: dict[str, tuple[str, Layout]] = {
    "up": ("layers.{layer}.mlp.up_proj.weight", "out_in"),
    "gate": ("layers.{layer}.mlp.gate_proj.weight", "out_in"),
    "down": ("layers.{layer}.mlp.down_proj.weight", "out_in"),
}

LLAMA = ArchSpec(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    gated=True,
    mlp=_LLAMA_MLP,
    final_norm="norm.weight",
    norm_style="rmsnorm",
    embed="embed_tokens.weight",
    gguf=_GGUF_GATED,
    gguf_architectures={t: t for t in ("llama", "mistral", "qwen2", "qwen3")},
    hf_architectures={
        "LlamaForCausalLM": "llama",
        "MistralForCausalLM": "mistral",
        "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3",
    },
)

_GEMMA_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")

GEMMA = ArchSpec(
    family="gemma",
    model_types=_GEMMA_TYPES,
    gated=True,
    mlp=_LLAMA_MLP,
    final_norm="norm.weight",
    norm_style="rmsnorm_1p",
    embed="embed_tokens.weight",
    mlp_out_norm="layers.{layer}.post_feedforward_layernorm.weight",
    prefixes=("model.", "model.language_model.", "language_model.model."),
    activation="gelu_tanh",
    gguf={**_GGUF_GATED, "mlp_out_norm": "blk.{layer}.post_ffw_norm.weight"},
    gguf_architectures={"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"},
    hf_architectures={
        "GemmaForCausalLM": "gemma",
        "Gemma2ForCausalLM": "gemma2",
        "Gemma3ForCausalLM": "gemma3_text",
        "Gemma3ForConditionalGeneration": "gemma3",
    },
    config_defaults={
        **{t: {"tie_word_embeddings": True} for t in _GEMMA_TYPES},
        "gemma2": {"tie_word_embeddings": True, "final_logit_softcapping": 30.0},
    },
)

OLMO = ArchSpec(
    family="olmo",
    model_types=("olmo",),
    gated=True,
    mlp=_LLAMA_MLP,
    final_norm=None,
    norm_style="layernorm_noparam",
    embed="embed_tokens.weight",
    gguf=_GGUF_GATED,
    gguf_architectures={"olmo": "olmo"},
    hf_architectures={"OlmoForCausalLM": "olmo"},
    eps_key="layer_norm_epsilon",
)

OLMO2 = ArchSpec(
    family="olmo2",
    model_types=("olmo2", "olmo3"),
    gated=True,
    mlp=_LLAMA_MLP,
    final_norm="norm.weight",
    norm_style="rmsnorm",
    embed="embed_tokens.weight",
    mlp_out_norm="layers.{layer}.post_feedforward_layernorm.weight",
    gguf={**_GGUF_GATED, "mlp_out_norm": "blk.{layer}.post_ffw_norm.weight"},
    gguf_architectures={"olmo2": "olmo2"},
    hf_architectures={"Olmo2ForCausalLM": "olmo2", "Olmo3ForCausalLM": "olmo3"},
    post_norm=True,
)

GPT2 = ArchSpec(
    family="gpt2",
    model_types=("gpt2",),
    gated=False,
    mlp={
        "up": ("h.{layer}.mlp.c_fc.weight", "in_out"),
        "down": ("h.{layer}.mlp.c_proj.weight", "in_out"),
    },
    final_norm="ln_f.weight",
    norm_style="layernorm",
    embed="wte.weight",
    pos_embed="wpe.weight",
    prefixes=("transformer.", ""),
    layers_module="transformer.h",
    down_module="mlp.c_proj",
    final_norm_module="transformer.ln_f",
    activation="gelu_new",
    gguf={
        "up": "blk.{layer}.ffn_up.weight",
        "down": "blk.{layer}.ffn_down.weight",
        "final_norm": "output_norm.weight",
        "embed": "token_embd.weight",
        "unembed": "output.weight",
    },
    gguf_architectures={"gpt2": "gpt2"},
    hf_architectures={"GPT2LMHeadModel": "gpt2"},
    config_defaults={"gpt2": {"tie_word_embeddings": True}},
    eps_key="layer_norm_epsilon",
)

GPT_NEOX = ArchSpec(
    family="gpt_neox",
    model_types=("gpt_neox",),
    gated=False,
    mlp={
        "up": ("layers.{layer}.mlp.dense_h_to_4h.weight", "out_in"),
        "down": ("layers.{layer}.mlp.dense_4h_to_h.weight", "out_in"),
    },
    final_norm="final_layer_norm.weight",
    norm_style="layernorm",
    embed="embed_in.weight",
    unembed="embed_out.weight",
    renamed={"embed_out.weight": "lm_head.weight"},
    prefixes=("gpt_neox.",),
    layers_module="gpt_neox.layers",
    down_module="mlp.dense_4h_to_h",
    final_norm_module="gpt_neox.final_layer_norm",
    activation="gelu",
    hf_architectures={"GPTNeoXForCausalLM": "gpt_neox"},
    eps_key="layer_norm_eps",
)

_GATE_UP = "layers.{layer}.mlp.gate_up_proj.weight"

PHI3 = ArchSpec(
    family="phi3",
    model_types=("phi3",),
    gated=True,
    mlp={
        "up": (_GATE_UP, "out_in"),
        "gate": (_GATE_UP, "out_in"),
        "down": ("layers.{layer}.mlp.down_proj.weight", "out_in"),
    },
    fused={"gate": (0, 2), "up": (1, 2)},
    final_norm="norm.weight",
    norm_style="rmsnorm",
    embed="embed_tokens.weight",
    hf_architectures={"Phi3ForCausalLM": "phi3"},
)

_EXPERT = "layers.{layer}.mlp.experts.{expert}."
_EXPERTS = "layers.{layer}.mlp.experts."

OLMOE = ArchSpec(
    family="olmoe",
    model_types=("olmoe",),
    gated=True,
    mlp={
        "up": (_EXPERT + "up_proj.weight", "out_in"),
        "gate": (_EXPERT + "gate_proj.weight", "out_in"),
        "down": (_EXPERT + "down_proj.weight", "out_in"),
    },
    experts_key="num_experts",
    stacked={
        "gate": (_EXPERTS + "gate_up_proj", 0, 2),
        "up": (_EXPERTS + "gate_up_proj", 1, 2),
        "down": (_EXPERTS + "down_proj", 0, 1),
    },
    down_module="mlp.experts",
    final_norm="norm.weight",
    norm_style="rmsnorm",
    embed="embed_tokens.weight",
    hf_architectures={"OlmoeForCausalLM": "olmoe"},
)

SPECS: tuple[ArchSpec, ...] = (LLAMA, GEMMA, OLMO, OLMO2, GPT2, GPT_NEOX, PHI3, OLMOE)


def supported_model_types() -> list[str]:
    """Return every ``config.model_type`` that has a spec, sorted."""
    return sorted(t for spec in SPECS for t in spec.model_types)


def supported_gguf_architectures() -> list[str]:
    """Return every llama.cpp architecture name that has a spec, sorted."""
    return sorted(a for spec in SPECS for a in spec.gguf_architectures)


def model_type_for_gguf(arch: Any, path: Any) -> str:
    """Return the ``model_type`` transformers reads a GGUF of architecture ``arch`` as, or
    raise naming the supported ones (``path``: the file, for the message)."""
    for spec in SPECS:
        if isinstance(arch, str) and arch in spec.gguf_architectures:
            return spec.gguf_architectures[arch]
    name = getattr(path, "name", path)
    raise UnsupportedArchitectureError(
        f"{name} is a GGUF of architecture {arch!r}, which conceptvec does not "
        f"support; supported GGUF architectures: {', '.join(supported_gguf_architectures())} "
        f"(model types: {', '.join(supported_model_types())})"
    )


def hf_architectures() -> dict[str, str]:
    """Return every transformers class name that has a spec -> its ``model_type``."""
    return {cls: t for spec in SPECS for cls, t in spec.hf_architectures.items()}


def spec_for_model_type(model_type: str) -> ArchSpec:
    """Return the spec for a ``config.model_type``, or raise naming the supported ones."""
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} is not supported; supported model types: "
        f"{', '.join(supported_model_types())} (open an issue to add a spec)"
    )


@dataclass(frozen=True)
class Dims:
    """The sizes decoding needs, read from a model's config."""

    n_layers: int
    d_model: int
    d_mlp: int
    vocab: int
    tied: bool
    logit_softcap: float | None = None
    n_experts: int = 0
    """Experts per layer of a mixture-of-experts model (``d_mlp`` is per expert); 0 if dense."""

    def to_dict(self) -> dict[str, object]:
        """Return the dims as a plain dict (``n_experts`` only for a mixture of experts)."""
        out: dict[str, object] = {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "vocab": self.vocab,
            "tied": self.tied,
            "logit_softcap": self.logit_softcap,
        }
        return {**out, "n_experts": self.n_experts} if self.n_experts else out

    def check(self, neuron: str | NeuronId | tuple[int, ...]) -> NeuronId:
        """Return ``neuron`` parsed, or raise naming the valid layers, indices and experts."""
        return NeuronId.parse(neuron).check(self.n_layers, self.d_mlp, self.n_experts)


def text_config(config: Any) -> Any:
    """Return the language-model part of a config (``text_config`` for multimodal ones)."""
    sub = getattr(config, "text_config", None)
    return sub if sub is not None else config


MAX_SIZE = 1 << 24
"""Sanity bound on any one declared size (layers, widths, vocabulary): 16,777,216."""


def _size(c: Any, names: tuple[str, ...], default: int | None = None) -> int:
    """Return the first of ``names`` set in config ``c`` as a positive int, or raise."""
    for name in names:
        value = getattr(c, name, None)
        if value is not None:
            break
    else:
        if default is not None:
            return default
        raise CorruptWeightsError(
            f"the model config has no {' or '.join(names)}; it is not a complete causal-LM "
            "config (re-download config.json)"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_SIZE:
        raise CorruptWeightsError(
            f"the model config says {name}={value!r}; it must be a whole number from 1 to "
            f"{MAX_SIZE} (the config.json or GGUF metadata is damaged)"
        )
    return value


def dims_from_config(config: Any, experts_key: str | None = None) -> Dims:
    """Return the Dims an HF config describes (GPT-2's ``n_inner`` defaults to 4 d_model;
    ``experts_key``: the field holding a mixture of experts' experts per layer).

    Every size must be a positive whole number; anything else raises CorruptWeightsError.
    The sizes are checked against the weights by :class:`conceptvec.models.Model`.
    """
    c = text_config(config)
    top = config
    d_model = _size(c, ("hidden_size", "n_embd"))
    d_mlp = _size(c, ("intermediate_size", "n_inner"), 4 * d_model)
    n_layers = _size(c, ("num_hidden_layers", "n_layer"))
    vocab = _size(c, ("vocab_size",))
    tied = getattr(top, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(c, "tie_word_embeddings", True)
    softcap = getattr(c, "final_logit_softcapping", None)
    if softcap is not None and (
        isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap > 0
    ):
        raise CorruptWeightsError(
            f"the model config says final_logit_softcapping={softcap!r}; it must be a "
            "positive number or null"
        )
    return Dims(
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=d_mlp,
        vocab=vocab,
        tied=bool(tied),
        logit_softcap=softcap,
        n_experts=_size(c, (experts_key,)) if experts_key else 0,
    )
