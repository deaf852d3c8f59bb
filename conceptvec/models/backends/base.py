"""The ``Backend`` protocol: what conceptvec asks of a live model object, whoever built it.

A backend is one library's way of running a causal LM: plain ``transformers`` with torch
hooks, TransformerLens (hook points), nnsight (edits placed inside a trace). Every caller
(interventions, activation readers, scoring, evaluation) talks to the model through these
few methods and never asks which library it is.

Backends are found by subclass, as einops finds its own: :func:`unwrap` asks every subclass
of :class:`Backend` (highest ``priority`` first) whether it :meth:`~Backend.claims` the
object. Supporting another library is subclassing :class:`Backend` in any module that is
imported before the model is used; nothing here needs to change.

Objects are recognised by their class's module name, so neither TransformerLens nor nnsight
is imported unless the user's model is one of theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from conceptvec.errors import UnsupportedModelError
from conceptvec.types import Tokenizer

if TYPE_CHECKING:
    import torch

    from conceptvec.models.arch import ArchSpec
    from conceptvec.models.model import Model

Point = Literal["mlp", "resid"]
"""A hook point of a layer: ``mlp`` is the MLP hidden activation ``act(gate) * up`` (the
down projection's input), ``resid`` the residual stream after the layer."""

Fn = Callable[[Any], Any]
"""A function a hook point's tensor goes through: it returns the tensor to use instead
(the same tensor to only read it)."""

Place = Callable[[], None]
"""Places the edit functions inside a running trace (a no-op for hook-based backends)."""


def _nothing() -> None:
    return None


class Backend(ABC):
    """One live model object seen through the library that built it.

    An instance holds the user's object (``obj``), the ``transformers`` module inside it
    (``hf``, None when the library keeps its own weights) and the wrapper's tokenizer.
    """

    name: ClassVar[str] = ""
    """Short name shown to users (``hf``, ``transformer_lens``, ``nnsight``)."""
    priority: ClassVar[int] = 0
    """Backends with a higher priority are asked first (the plain ``transformers`` one,
    which claims anything with a config and a state dict, is asked last)."""
    torch_hooks: ClassVar[bool] = False
    """True when its hooks are plain torch hooks on ``hf`` and it runs ``hf`` itself, so a
    caller may add its own torch hooks there (scoring's layer skipping does)."""
    run_hint: ClassVar[str] = "run the model inside the `with` block"
    """What to tell a user whose edit never fired."""

    def __init__(self, obj: Any, hf: Any, tokenizer: Tokenizer | None = None):
        self.obj = obj
        self.hf = hf
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ finding
    @classmethod
    @abstractmethod
    def claims(cls, obj: object) -> bool:
        """Return True if ``obj`` is this library's model object (never imports the library)."""

    @classmethod
    def open(cls, obj: Any) -> Backend:
        """Return the backend over ``obj`` (claimed by this class); raise
        UnsupportedModelError when the object cannot be used."""
        return cls(obj, obj, getattr(obj, "tokenizer", None))

    # ------------------------------------------------------------------ weights
    def own_weights(self, tokenizer: Tokenizer | None = None) -> Model | None:
        """Return a :class:`Model` over the object's weights when the library keeps its own
        (not a ``transformers`` module), else None: then :func:`conceptvec.load` reads
        ``hf``."""
        del tokenizer
        return None

    def weights_changed(self) -> str | None:
        """Return why the object's weights are no longer the checkpoint's (its library
        rewrote them in place), as a one-line message saying what to do; None when they are."""
        return None

    def rule_tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer | None:
        """Return the tokenizer whose defaults are the model's own tokenization rule (the
        BOS it puts before a text). The wrapper's tokenizer, unless the library changed it."""
        return tokenizer

    @property
    def module(self) -> torch.nn.Module:
        """The module that receives the token ids of every forward pass."""
        return self.hf

    @property
    def weights_module(self) -> torch.nn.Module:
        """The torch module holding the weights (``hf``, else the object itself)."""
        return self.hf if self.hf is not None else self.obj

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where input ids must go)."""
        return next(self.weights_module.parameters()).device

    @property
    def generation_config(self) -> Any:
        """The object holding ``pad_token_id`` / ``eos_token_id`` (None when unknown)."""
        hf = self.hf
        return getattr(hf, "generation_config", None) or getattr(hf, "config", None)

    # ------------------------------------------------------------------ hook points
    @abstractmethod
    def point(self, spec: ArchSpec, layer: int, kind: Point) -> str:
        """Return the name of ``layer``'s hook point ``kind`` (for messages and counts)."""

    @abstractmethod
    def hooks(
        self, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]
    ) -> AbstractContextManager[None]:
        """Return a context manager inside which ``mlp[layer]`` sees (and may replace)
        ``layer``'s MLP activations and ``resid[layer]`` its output, in every forward pass
        of the object; every hook is removed on exit, exceptions included. A backend that
        places edits inside a trace returns a no-op here and acts in :meth:`place`."""

    def expert_hooks(
        self, spec: ArchSpec, mlp: dict[tuple[int, int], Fn]
    ) -> AbstractContextManager[None]:
        """Return a context manager inside which ``mlp[(layer, expert)]`` sees (and may
        replace) one expert's MLP activations ``[batch, tokens, d_mlp]`` in a
        mixture-of-experts model; only tokens routed to that expert feel the change."""
        del spec, mlp
        raise UnsupportedModelError(
            f"per-expert edits are not supported on a {self.name} model; pass the "
            "transformers model itself"
        )

    def expert_point(self, spec: ArchSpec, layer: int, expert: int) -> str:
        """Return the name of one expert's hook point (for messages and counts)."""
        return f"{self.point(spec, layer, 'mlp')}[{expert}]"

    def place(self, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]) -> None:
        """Put the functions on their points inside the current trace (trace-based
        backends; a no-op for hook-based ones, whose :meth:`hooks` are live)."""
        del spec, mlp, resid

    # ------------------------------------------------------------------ running
    @abstractmethod
    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> Any:
        """Return ``[batch, tokens, vocab]`` logits of ``ids`` (``mask``: attention mask or
        None); ``place`` is called inside the trace of trace-based backends."""

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> None:
        """Run one forward pass for its hooks' sake (the logits are not needed)."""
        self.logits(ids, mask, place)

    @abstractmethod
    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        mask: torch.Tensor,
        pad: int | None,
        place: Place = _nothing,
    ) -> torch.Tensor:
        """Return greedy continuations ``[batch, new tokens]`` of left-padded ``ids``
        (``mask`` marks real tokens), with ``place`` called at every step of a trace."""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.obj).__name__})"


def backends() -> list[type[Backend]]:
    """Return every concrete Backend subclass, in the order they are asked (by priority)."""
    found: list[type[Backend]] = []
    todo = list(Backend.__subclasses__())
    while todo:
        cls = todo.pop(0)
        if cls not in found:
            found.append(cls)
            todo += cls.__subclasses__()
    concrete = [c for c in found if not getattr(c, "__abstractmethods__", None)]
    return sorted(concrete, key=lambda c: -c.priority)


def unwrap(obj: object, action: str = "use {} as a model") -> Backend:
    """Return the :class:`Backend` over ``obj``: a ``transformers`` model, a TransformerLens
    ``TransformerBridge`` or ``HookedTransformer``, an nnsight ``LanguageModel`` /
    ``TransformersModel``, or whatever a user's own Backend subclass claims.

    Raises UnsupportedModelError (a TypeError) naming what can be passed instead; ``action``
    words the message (``"intervene on {}"`` says ``cannot intervene on a Linear``).
    """
    if isinstance(obj, Backend):
        return obj
    for cls in backends():
        if cls.claims(obj):
            return cls.open(obj)
    raise UnsupportedModelError(
        f"cannot {action.format('a ' + type(obj).__name__)}: pass an alias, path or hub id, "
        "a conceptvec Model, a transformers causal LM, a TransformerLens TransformerBridge or "
        "HookedTransformer, or an nnsight LanguageModel"
    )


def is_library_object(obj: object, library: str) -> bool:
    """Return True if ``obj``'s class comes from ``library`` (a top-level package name),
    without importing it."""
    module = type(obj).__module__ or ""
    return module == library or module.startswith(library + ".")


def walk(root: Any, path: str) -> Any:
    """Return the node at dotted ``path`` under ``root`` (digits index lists): a module, or
    an nnsight envoy."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node
