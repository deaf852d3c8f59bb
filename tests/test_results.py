"""Every result type has one interface: to_dict (field names kept), str, HTML, plot."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import conceptvec
from conceptvec.results import Result, SearchResult

RESULT_TYPES = {
    "Decoding": "conceptvec",
    "TokenScore": "conceptvec.decoding",
    "AtlasHit": "conceptvec.atlas",
    "WeightHit": "conceptvec.atlas",
    "AtlasDiff": "conceptvec.atlas",
    "BuildReport": "conceptvec.atlas",
    "EffectResult": "conceptvec",
    "DoseResponse": "conceptvec.interventions",
    "ConceptSearch": "conceptvec",
    "ConceptVector": "conceptvec",
    "QAEvaluation": "conceptvec.qa",
    "EvalReport": "conceptvec",
    "WeightComparison": "conceptvec.evaluate",
    "TopContexts": "conceptvec",
    "Activations": "conceptvec",
    "UnlearnResult": "conceptvec",
    "SearchResult": "conceptvec.results",
}
"""Each result type and where it is exported (the package root for the main ones)."""


def result_type(name: str) -> type:
    import importlib

    home = importlib.import_module(RESULT_TYPES[name])
    assert name in getattr(home, "__all__", [name]), f"{name} not in {home.__name__}.__all__"
    return getattr(home, name)


@pytest.mark.parametrize("name", RESULT_TYPES)
def test_every_result_type_is_exported_and_has_the_interface(name):
    cls = result_type(name)
    assert issubclass(cls, Result)
    for method in ("to_dict", "__str__", "_repr_html_", "plot"):
        assert getattr(cls, method) is not getattr(object, method, None), method
    if name != "SearchResult":
        assert dataclasses.is_dataclass(cls)


def test_every_figure_is_drawn_in_viz():
    import inspect

    for name in RESULT_TYPES:
        plot = result_type(name).plot
        code = inspect.getsource(plot)
        assert "import plotly" not in code and "go.Figure" not in code, f"{name}.plot: not viz"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from .conftest import build_tiny

    hf, tok = build_tiny("llama")
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_decoding_search_and_build_results_show_themselves(tiny, tmp_path):
    pytest.importorskip("plotly")
    m = conceptvec.load(tiny, quiet=True)
    d = conceptvec.decode(m, "L1.3", k=4)
    report = conceptvec.build_atlas(m, tmp_path / "atlas", k=4, progress=False)
    word = d.top_tokens[0]
    hits = conceptvec.search_weights(m, word, top=3)
    atlas_hits = conceptvec.Atlas(tmp_path / "atlas").search(word, top=3)
    for result in (d, report, hits, atlas_hits, hits[0], atlas_hits[0], d.top[0]):
        data = result.to_dict()
        if dataclasses.is_dataclass(result):
            names = {f.name for f in dataclasses.fields(result)}
            unset = {n for n in names if getattr(result, n) is None}  # e.g. prob without probs
            assert set(data) >= names - unset
        assert str(result) and "object at 0x" not in str(result)
        assert result._repr_html_().startswith("<")
        assert type(result.plot()).__name__ == "Figure"
    assert isinstance(hits, SearchResult) and isinstance(atlas_hits, SearchResult)
    assert hits.to_dict()["hits"][0]["rank"] == 1 and hits.query == word
    assert str(hits).splitlines()[0].split()[:2] == ["rank", "neuron"]


def test_decode_has_one_return_type_per_call(tiny):
    m = conceptvec.load(tiny, quiet=True)
    assert isinstance(conceptvec.decode(m, "L1.3"), conceptvec.Decoding)
    assert isinstance(conceptvec.decode(m, ["L1.3"]), list)
    many = conceptvec.decode_many(m, "L1.3")
    assert isinstance(many, list) and many[0].top_tokens == conceptvec.decode(m, "L1.3").top_tokens
    vectors = torch.randn(2, m.dims.d_model)
    assert len(conceptvec.decode_many(m, vectors[0])) == 1
    assert len(conceptvec.decode_many(m, vectors)) == 2
