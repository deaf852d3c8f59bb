"""A concept's token set on tiny random models: the name's acronym joins the core, and the
weight search keys on the words the concept's text uses far more than the language does."""

from __future__ import annotations

from collections import Counter

import pytest

import conceptvec as cv
from conceptvec.concepts.find import merge_hits, search_concept, search_text_words
from conceptvec.concepts.tokens import _WORD, STOPWORDS, acronyms, concept_tokens
from conceptvec.decoding import project, residual_vectors
from conceptvec.tokens import token_text

from .conftest import CORPUS, build_tiny

# a tokenizer trained on this has " NHS", " National", " Health" and " Service" as tokens
NHS_CORPUS = [
    "The National Health Service (NHS) runs the hospitals of England: the NHS.",
    "National Health Service, National Health Service; Health and Service.",
] * 6
ARTICLE = (
    "The National Health Service (NHS) is paid for by taxes. The NHS runs hospitals; "
    "NHS doctors and NHS nurses work in them, and the NHS buys medicines."
)


@pytest.fixture(scope="module")
def nhs_model(tmp_path_factory):
    hf, tok = build_tiny("llama", corpus=CORPUS + NHS_CORPUS)
    folder = tmp_path_factory.mktemp("nhs")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return cv.load(str(folder), quiet=True)


def test_acronyms_are_the_initials_of_the_whole_name():
    assert acronyms("National Health Service", [ARTICLE]) == ["NHS"]
    assert acronyms("National Health Service", ["the NHS, once"]) == []
    assert acronyms("National Health Service", ["the NHS, once"], min_count=1) == ["NHS"]
    assert acronyms("Department of Defense", ["the DoD said; the DoD"]) == ["DoD"]
    assert acronyms("United States of America", ["USA! USA!"]) == ["USA"]
    # an ordinary word spelled by the initials is no acronym; nor are lower-case letters
    assert acronyms("Culture of Latin America", ["Cola, cola and cola. Cola."]) == []
    assert acronyms("National Health Service", ["nhs nhs nhs"]) == []
    # initials of part of the name abbreviate a broader concept: not taken
    assert acronyms("Tactical role-playing game", ["an RPG, the RPG, RPGs"]) == []
    assert acronyms("Tactical role-playing game", ["a TRPG; the TRPG"]) == ["TRPG"]
    assert acronyms("Baseball", ["B and B"]) == []


def test_the_acronym_joins_the_core_and_becomes_the_key(nhs_model):
    c = concept_tokens(nhs_model, "National Health Service", [ARTICLE])
    assert {"National", "Health", "Service", "NHS"} <= set(c.core)
    assert {c.texts[i].strip() for i in c.core["NHS"]} == {"NHS"}
    counts = Counter(_WORD.findall(ARTICLE))
    total = sum(counts.values())
    for w in ("Health", "NHS"):
        want = counts[w] * min(c.core[w]) / total
        assert c.specificity[w] == pytest.approx(want), w
    # NHS: 6 times; each name word once: only the acronym keys the search
    assert c.key == ["NHS"] and set(c.key_ids) == set(c.core["NHS"])
    assert set(c.key_ids) < set(c.core_ids)  # the name words stay concept tokens
    assert "key: NHS" in str(c) and c.to_dict()["key"] == ["NHS"]
    # the text never writes the acronym: no acronym, and every word keys the search
    plain = concept_tokens(nhs_model, "National Health Service")
    assert "NHS" not in plain.core and plain.key == list(plain.core)
    assert plain.key_ids == plain.core_ids
    once = concept_tokens(nhs_model, "National Health Service", ["the NHS and its Health"])
    assert "NHS" not in once.core


def test_the_search_ranks_neurons_on_the_key_words_alone(nhs_model):
    c = concept_tokens(nhs_model, "National Health Service", [ARTICLE])
    hits = search_concept(nhs_model, c, top=4)
    ids = c.key_ids  # one word form ("NHS", with and without the space): key = its best z
    keys = {}
    for layer in range(nhs_model.dims.n_layers):
        full = project(nhs_model, residual_vectors(nhs_model, layer, "down"))
        z = (full - full.mean(1, keepdim=True)) / full.std(1, correction=0, keepdim=True)
        for sign, side in ((1, "top"), (-1, "bottom")):
            for i, k in enumerate((sign * z[:, ids]).max(1).values.tolist()):
                if k > keys.get((layer, i), (-1e9,))[0]:
                    keys[(layer, i)] = (k, side)
    best = sorted(keys.items(), key=lambda kv: -kv[1][0])[:4]
    assert [(h.neuron.layer, h.neuron.index) for h in hits] == [n for n, _ in best]
    assert [h.side for h in hits] == [s for _, (_, s) in best]
    assert [h.key for h in hits] == pytest.approx([k for _, (k, _) in best], abs=1e-3)
    assert all(h.matched[0].strip() == "NHS" for h in hits)


def test_distinctive_words_are_the_texts_rarest_frequent_words(nhs_model):
    """Distinctive = count x token id (Zipf), >= 3 uses, outside core and related, whatever
    their place in the head: a compound name need not mean what its words mean apart."""
    text = token_text(nhs_model.tokenizer)
    article = ARTICLE + " Hospitals of England: the hospitals, the hospitals of England, England."
    c = concept_tokens(nhs_model, "National Health Service", [article])
    taken = set(c.core_ids) | set(c.related)
    assert c.distinctive and not set(c.distinctive) & taken
    assert {c.texts[i] for i in c.distinctive} >= {" hospitals", " England"}
    counts = Counter(w for w in _WORD.findall(article) if len(w) >= 3)
    index: dict[str, list[int]] = {}
    for i in range(nhs_model.dims.vocab):
        index.setdefault(text(i), []).append(i)
    cut = int(0.03 * nhs_model.dims.vocab)
    want = sorted(
        (
            (-n * index[" " + w][0], index[" " + w][0])
            for w, n in counts.items()
            if n >= 3
            and " " + w in index
            and index[" " + w][0] >= cut
            and index[" " + w][0] not in taken
            and w.lower() not in STOPWORDS
        ),
    )
    assert c.distinctive == [i for _, i in want][:24]
    assert set(c.distinctive) <= set(c.ids) and not set(c.distinctive) & set(c.kind)
    assert "distinctive:" in str(c) and c.to_dict()["distinctive"] == [
        c.texts[i] for i in c.distinctive
    ]
    assert concept_tokens(nhs_model, "National Health Service").distinctive == []
    few = concept_tokens(nhs_model, "National Health Service", [article], max_distinctive=1)
    assert few.distinctive == c.distinctive[:1]


def test_merge_interleaves_the_two_searches_each_neuron_once(nhs_model):
    article = ARTICLE + " Hospitals of England: the hospitals, the hospitals of England, England."
    c = concept_tokens(nhs_model, "National Health Service", [article])
    a, b = search_concept(nhs_model, c, top=5), search_text_words(nhs_model, c, top=5)
    assert b and [h.key for h in b] == sorted((h.key for h in b), reverse=True)
    merged = merge_hits(a, b, top=6)
    names = [str(h.neuron) for h, _ in merged]
    assert len(names) == len(set(names)) == 6
    assert merged[0] == (a[0], 0)
    assert merged[1][1] == (0 if str(b[0].neuron) == str(a[0].neuron) else 1)
    expected = []
    for x, y in zip(a, b):
        for h, n in ((x, 0), (y, 1)):
            if str(h.neuron) not in [str(e.neuron) for e, _ in expected]:
                expected.append((h, n))
    assert merged == expected[:6]
    assert merge_hits(a, [], top=3) == [(h, 0) for h in a[:3]]
