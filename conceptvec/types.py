"""Type names shared by annotations across the package (no runtime behaviour).

- :class:`Tokenizer`: the part of a Hugging Face tokenizer that conceptvec calls. Any HF
  ``PreTrainedTokenizerBase`` fits, and so does a small stand-in with these methods.
- :data:`JSON`: one decoded JSON object, or what a ``to_dict()`` returns (values are read
  with ``isinstance`` checks or passed on, never trusted blindly).
- :data:`ModelSource`: what :func:`conceptvec.load` accepts (a :class:`~conceptvec.Model`,
  a folder, hub name or GGUF path, or a live HF / TransformerLens / nnsight model); the
  functions that take one check it at run time, so the static type is ``object``.
- :data:`HookFn`: a function that sees one activation tensor and returns it (changed or
  not), as backends attach them to hook points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

JSON = dict[str, object]
ModelSource = object
HookFn = Callable[[torch.Tensor], torch.Tensor]


class PrettyPrinter(Protocol):
    """IPython's pretty printer, as a ``_repr_pretty_`` hook uses it."""

    def text(self, obj: str) -> None: ...


class Tokenizer(Protocol):
    """The tokenizer methods and properties conceptvec uses (HF's names and meanings)."""

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def pad_token_id(self) -> int | None: ...

    def __len__(self) -> int: ...

    # HF's own signatures have many keyword options; the protocol accepts them all
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def encode(self, *args: Any, **kwargs: Any) -> list[int]: ...

    def decode(self, *args: Any, **kwargs: Any) -> str | list[str]: ...

    def convert_ids_to_tokens(self, *args: Any, **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, *args: Any, **kwargs: Any) -> Any: ...

    def tokenize(self, *args: Any, **kwargs: Any) -> list[str]: ...
