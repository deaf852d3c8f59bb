"""Rendering a model's chat template under a size and time limit.

A chat template is a Jinja program shipped in a model folder. transformers renders it in
Jinja's sandbox, which blocks attribute tricks but not work: nested ``range(100000)``
loops run for hours and an output that doubles in a loop fills memory. Every chat prompt
conceptvec builds goes through :func:`render_chat`, which renders the template that
transformers would use with these limits, all per render:

- the template text is at most :data:`TEMPLATE_LIMIT` characters;
- the output is at most :data:`OUTPUT_LIMIT` characters (checked as it is produced);
- ``range`` yields at most :data:`RANGE_BUDGET` items in all, and every range step, call
  and attribute lookup checks a :data:`TIME_LIMIT` deadline.

A template that breaks a limit, or fails (``TemplateError``, ``SecurityError``), raises
:class:`~conceptvec.errors.BadChatTemplateError` in one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from conceptvec.errors import BadChatTemplateError

TEMPLATE_LIMIT = 1 << 20
"""The longest chat template rendered: 1 Mi characters (real ones are a few thousand)."""
OUTPUT_LIMIT = 4 << 20
"""The longest rendered prompt: 4 Mi characters."""
RANGE_BUDGET = 100_000
"""Items all ``range`` calls of one render may yield together."""
TIME_LIMIT = 10.0
"""Seconds one render may take."""

_budget = threading.local()
_FIX = "the model folder's chat template is hostile or broken; drop --chat (chat=False)"


class _Exceeded(Exception):
    pass


def _check() -> None:
    deadline = getattr(_budget, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise _Exceeded(f"took more than {TIME_LIMIT:g} s")


def _range(*args: int) -> Iterator[int]:
    for i in range(*args):
        left = getattr(_budget, "items", None)
        if left is not None:
            if left <= 0:
                raise _Exceeded(f"loops over more than {RANGE_BUDGET:,} range items")
            _budget.items = left - 1
            _check()
        yield i


def _limit(compiled: Any) -> None:
    """Make the (transformers-cached) compiled template check the budget as it renders."""
    if getattr(compiled, "_conceptvec_limited", False):
        return
    env = compiled.environment
    env.globals["range"] = _range
    call, getattr_ = env.call, env.getattr

    def checked_call(*args: Any, **kwargs: Any) -> Any:
        _check()
        return call(*args, **kwargs)

    def checked_getattr(obj: Any, attribute: str) -> Any:
        _check()
        return getattr_(obj, attribute)

    env.call, env.getattr = checked_call, checked_getattr

    def render(*args: Any, **kwargs: Any) -> str:
        parts, size = [], 0
        for part in compiled.generate(*args, **kwargs):
            size += len(part)
            if size > OUTPUT_LIMIT:
                raise _Exceeded(f"renders more than {OUTPUT_LIMIT:,} characters")
            parts.append(part)
            _check()
        return "".join(parts)

    compiled.render = render
    compiled._conceptvec_limited = True


def render_chat(
    tok: Any, messages: list[dict[str, object]], add_generation_prompt: bool = True
) -> str:
    """Return ``messages`` rendered by ``tok``'s chat template, within the limits above."""
    import jinja2
    from transformers.utils import chat_template_utils

    try:
        template = tok.get_chat_template()
    except (ValueError, TypeError) as e:
        raise BadChatTemplateError(f"no usable chat template ({_short(e)}); {_FIX}") from None
    if not isinstance(template, str) or len(template) > TEMPLATE_LIMIT:
        size = len(template) if isinstance(template, str) else type(template).__name__
        raise BadChatTemplateError(
            f"the chat template is {size} characters, over the {TEMPLATE_LIMIT:,} allowed; {_FIX}"
        )
    try:
        _limit(chat_template_utils._compile_jinja_template(template))
        _budget.deadline, _budget.items = time.monotonic() + TIME_LIMIT, RANGE_BUDGET
        text = tok.apply_chat_template(
            messages,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    except (_Exceeded, jinja2.TemplateError, OverflowError, RecursionError, MemoryError) as e:
        raise BadChatTemplateError(f"the chat template {_short(e)}; {_FIX}") from None
    finally:
        _budget.deadline = _budget.items = None
    if not isinstance(text, str):
        raise BadChatTemplateError(f"the chat template rendered a {type(text).__name__}; {_FIX}")
    return text


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    what = text[0][:160] if text else ""
    if isinstance(e, _Exceeded):
        return what
    return f"failed ({type(e).__name__}: {what})"
