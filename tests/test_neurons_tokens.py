"""Neuron ids and token text."""

from __future__ import annotations

import pytest

from conceptvec import NeuronId
from conceptvec.errors import BadNeuronIdError, NeuronOutOfRangeError
from conceptvec.tokens import TokenText, show

from .conftest import make_tokenizer


@pytest.mark.parametrize("text", ["L29.808", "l29.808", "L29N808", "29:808", "29.808", " L29.808 "])
def test_neuron_id_formats(text):
    assert NeuronId.parse(text) == NeuronId(29, 808)
    assert str(NeuronId.parse(text)) == "L29.808"


@pytest.mark.parametrize("text", ["L29", "29", "Lx.1", "L-1.2", "L1.2.3", ""])
def test_bad_neuron_ids(text):
    with pytest.raises(BadNeuronIdError, match="L<layer>.<index>"):
        NeuronId.parse(text)


def test_range_checks_name_the_valid_range():
    with pytest.raises(NeuronOutOfRangeError, match=r"layers 0\.\.29"):
        NeuronId(30, 0).check(30, 1536)
    with pytest.raises(NeuronOutOfRangeError, match=r"neurons 0\.\.1535"):
        NeuronId(3, 1536).check(30, 1536)


def test_bytelevel_tokens_keep_leading_space_and_show_partial_bytes():
    tok = make_tokenizer("bytelevel")
    text = TokenText(tok)
    assert text.byte_level
    the = tok.convert_tokens_to_ids("Ġthe")
    assert text(the) == " the"
    # the dog emoji is 4 UTF-8 bytes; a lone first byte is shown as <0xF0>
    first_byte = tok.convert_tokens_to_ids("ð")
    assert text(first_byte) == "<0xF0>"
    assert text(10_000) == "<id 10000>"


def test_sentencepiece_tokens_keep_leading_space():
    tok = make_tokenizer("sentencepiece")
    text = TokenText(tok)
    assert not text.byte_level
    pieces = [p for p in tok.get_vocab() if p.startswith("▁") and len(p) > 2]
    assert pieces
    assert text(tok.convert_tokens_to_ids(pieces[0])) == " " + pieces[0][1:]
    assert text(tok.convert_tokens_to_ids("<0x0A>")) == "\n"


def test_no_tokenizer_shows_ids():
    assert TokenText(None)(5) == "<id 5>"


def test_show_escapes():
    assert show(" dog") == '" dog"'
    assert show("a\nb") == '"a\\nb"'
    assert show('say "hi"') == '"say \\"hi\\""'
    assert show("\x7f") == '"\\x7f"'
    assert show("café") == '"café"'


def test_layer_lists_parse_in_the_library_as_on_the_command_line():
    from conceptvec.errors import AtlasError
    from conceptvec.neurons import parse_layers

    assert parse_layers("0-3, 7") == [0, 1, 2, 3, 7]
    assert parse_layers(None) is None and parse_layers("") is None
    assert parse_layers([2, 1]) == [2, 1]
    with pytest.raises(AtlasError, match="cannot read layers"):
        parse_layers("1-x")
    with pytest.raises(AtlasError, match="run backwards"):
        parse_layers("3-1")
