"""Token ids -> readable text, with leading spaces kept and partial bytes made visible.

``tokenizer.decode([id])`` is not good enough for a neuron atlas: SentencePiece tokenizers
drop the leading space of a lone token (" dog" prints as "dog"), and byte-level BPE tokens
that hold part of a UTF-8 character decode to "\\ufffd". :class:`TokenText` reads the raw
vocabulary piece instead and converts it by the tokenizer's own convention:

- byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen): the piece's characters map to bytes;
  bytes that are not valid UTF-8 show as ``<0xE2>``, as SentencePiece writes them;
- SentencePiece (Llama 2, Gemma): ``▁`` is a space and ``<0x0A>`` is the byte 0x0A.

Without a tokenizer, a token shows as ``<id 123>``.
"""

from __future__ import annotations

import codecs
import json
import re
import weakref
from functools import lru_cache

from conceptvec.types import Tokenizer

_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Return GPT-2's printable-character -> byte table (the inverse of its byte encoder)."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _hex_bytes(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):  # only ever registered for decoding
        raise err
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("conceptvec_hex", _hex_bytes)


def _bytes_to_text(data: bytes) -> str:
    """Decode UTF-8, showing each byte of an invalid or partial sequence as ``<0xE2>``."""
    return data.decode("utf-8", errors="conceptvec_hex")


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    try:  # the decoder alone serialises in microseconds; the whole tokenizer can take 0.4 s
        state = json.loads(decoder.__getstate__())
    except Exception:
        return False
    kinds = [state.get("type")] + [d.get("type") for d in state.get("decoders", []) or []]
    return "ByteLevel" in kinds


_BY_TOKENIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_text(tokenizer: Tokenizer | None) -> TokenText:
    """Return the (cached) :class:`TokenText` of ``tokenizer``."""
    if tokenizer is None:
        return TokenText(None)
    try:
        cached = _BY_TOKENIZER.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return TokenText(tokenizer)
    if cached is None:
        cached = _BY_TOKENIZER[tokenizer] = TokenText(tokenizer)
    return cached


class TokenText:
    """Readable text for each token id of one tokenizer (or ids alone when there is none)."""

    def __init__(self, tokenizer: Tokenizer | None = None):
        self.tokenizer = tokenizer
        self.byte_level = tokenizer is not None and _is_byte_level(tokenizer)
        self._size = len(tokenizer) if tokenizer is not None else 0

    def __call__(self, token_id: int) -> str:
        """Return the text of one token id; a leading space stays a space."""
        token_id = int(token_id)
        if self.tokenizer is None or not 0 <= token_id < self._size:
            return f"<id {token_id}>"
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return f"<id {token_id}>"
        if self.byte_level:
            table = _byte_decoder()
            if all(ch in table for ch in piece):
                return _bytes_to_text(bytes(table[ch] for ch in piece))
            return piece  # added / special tokens are stored as plain text
        m = _SP_BYTE.match(piece)
        if m:
            return _bytes_to_text(bytes([int(m.group(1), 16)]))
        return piece.replace("▁", " ")

    def many(self, token_ids) -> list[str]:
        """Return the text of each id in ``token_ids``."""
        return [self(int(i)) for i in token_ids]


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def show(text: str) -> str:
    """Return ``text`` in double quotes with escapes, so ``" dog"`` and ``"\\n"`` are visible.

    >>> show(" dog"), show("a\\nb"), show("\\x7f")
    ('" dog"', '"a\\\\nb"', '"\\\\x7f"')
    """
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}")
    return '"' + "".join(out) + '"'
