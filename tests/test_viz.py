"""One plot route (``viz.figure`` by type), HTML tables for every result, labelled figures,
the noise floor of the recovered share, and the ``eval --html`` page; a slow test takes
screenshots of every figure and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

import conceptvec as cv
from conceptvec.evaluate.behaviour import (
    LOST_FLOOR,
    Recovery,
    apply_floor,
    drop_noise,
    noise_floor,
)
from conceptvec.evaluate.report import TOO_LITTLE
from conceptvec.results import Result
from tests.test_evaluate import KEY, _records, _variant

pytest.importorskip("plotly")

from conceptvec import viz  # noqa: E402

PROMPTS = ["I went to the park and saw a", "The cat sat on the"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(
    os.environ.get("CONCEPTVEC_ARTIFACTS", Path(__file__).parent.parent / "build" / "artifacts")
)
"""Where the screenshots go (``build/`` is ignored by git; CI uploads the folder)."""


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("llama")


@pytest.fixture(scope="module")
def results(tiny, tmp_path_factory):
    """One of each kind of result, on the tiny Llama."""
    m = cv.load(tiny, quiet=True)
    d = cv.decode(m, "L1.3", k=8)

    def scramble(sd):
        w = sd[KEY.format(2)]
        g = torch.Generator().manual_seed(3)
        w[:, 7] = torch.randn(w.shape[0], generator=g) * 400 * w.abs().mean()

    unl = _variant(tiny, tmp_path_factory.mktemp("viz") / "scrambled", scramble)
    concepts = _records({"Ancient Rome": (2, 7), "Italy": (1, 3)})
    return {
        "decoding": d,
        "search": cv.search_weights(m, d.top_tokens[0], top=5),
        "effect": cv.measure_effect(m, PROMPTS, cv.clamp("L1.3", 10), targets=[" dog"], controls=3),
        "dose": cv.dose_response(m, PROMPTS[0], "L1.3", [0, 5, 10], targets=[" dog"], controls=2),
        "qa": cv.evaluate_qa(
            m, ["What is Rome?", "Who was Caesar?"], cv.zero("L1.3"), controls=2, max_new_tokens=4
        ),
        "contexts": cv.top_contexts(m, "L1.3", PROMPTS, top=5),
        "eval": cv.evaluate.intrinsic(
            tiny,
            [unl, tiny],
            concepts,
            attacks=("recovery", "quant4"),
            controls=3,
            max_questions=3,
            max_new_tokens=4,
        ),  # fmt: skip
        "eval_weights_only": cv.evaluate.intrinsic(
            tiny, [unl], concepts, qa=False, trace_activations=False
        ),
    }


def _result_types() -> set[type]:
    out, todo = set(), [Result]
    while todo:
        cls = todo.pop()
        out.add(cls)
        todo += cls.__subclasses__()
    return out


def test_one_plot_route_by_type(results):
    assert not hasattr(viz, "FIGURES")
    overriding = [c.__qualname__ for c in _result_types() if c is not Result and "plot" in vars(c)]
    assert not overriding, f"{overriding} override plot(); register on viz.figure instead"
    default = viz.figure.dispatch(object)
    for name, r in results.items():
        assert viz.figure.dispatch(type(r)) is not default, name
        fig = r.plot()
        assert type(fig).__name__ == "Figure" and fig.layout.title.text, name

    class Custom(Result):  # a user's result type draws itself through the same route
        def to_dict(self):
            return {"x": 1}

    assert viz.figure(Custom()).data[0].type == "table"
    viz.figure.register(Custom)(lambda r: "drawn")
    assert Custom().plot() == "drawn"


def test_every_result_renders_an_html_table(results):
    for name, r in results.items():
        page = r._repr_html_()
        assert "<table" in page and "<pre" not in page, name
    effect = results["effect"]._repr_html_()
    assert "&quot; dog&quot;" in effect and "p before" in effect  # the token, quoted
    qa = results["qa"]._repr_html_()
    assert qa.count("<tr>") == 1 + 2  # header + one row per question
    report = results["eval"]
    assert report._repr_html_().count("<tr>") == 1 + 4  # header + 2 checkpoints x 2 concepts


def test_labels_quote_tokens_and_every_axis_has_a_title(results):
    assert 'p(" dog")' in results["effect"].plot().layout.title.text
    dose = results["dose"].plot()
    assert 'p(" dog")' in dose.layout.title.text and 'p(" dog")' in dose.layout.yaxis.title.text
    assert all(y.startswith('"') for y in results["decoding"].plot().data[0].y)
    for name, r in results.items():
        layout = r.plot().layout
        axes = [k for k in layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]
        for axis in axes:
            assert layout[axis].title.text, f"{name}: {axis} has no title"


def test_eval_figure_stacks_titled_panels(results):
    fig = results["eval"].plot()
    titles = [a for a in fig.layout.annotations if a.text]
    assert len(titles) == 3 and len({round(a.y, 2) for a in titles}) == 3  # stacked: no overlap
    recovery = [t for t in fig.data if t.type == "bar" and "restore" in (t.x or ())]
    texts = [x for t in recovery for x in t.text]
    assert "too little forgetting" in texts  # the base against itself lost nothing
    assert any(x[0].isdigit() for x in texts)  # the scrambled checkpoint's shares are numbers


def test_the_recovered_share_needs_forgetting_above_the_noise():
    assert noise_floor([]) == LOST_FLOOR and noise_floor([0.3]) == LOST_FLOOR
    assert noise_floor([0.1, -0.1, 0.1, -0.1]) == pytest.approx(2 * (0.04 / 3) ** 0.5)
    assert noise_floor([0.001, 0.0011]) == LOST_FLOOR  # never below the floor
    # a 3-step GA run: forget drop +0.016, a random control moves the forget log p by ~0.05
    clamp = Recovery("recovery:clamp", -1.08, -5.25, [0.3, -2.0], 40.0, floor=0.1)
    quant = Recovery("quant4", -1.0, 0.4)
    apply_floor([clamp, quant], unlearned=-1.0, base=-0.984)
    assert clamp.recovered is None and quant.recovered is None and quant.floor == 0.1
    assert clamp.percentile is None and not clamp.control_recovered
    kept = Recovery("recovery:clamp", -0.5, 0.5, floor=0.1)
    apply_floor([kept], unlearned=-1.0, base=0.0)
    assert kept.recovered == 0.5  # a drop of 1.0 is far above the floor
    # three questions whose drops scatter around a small mean: within their standard error
    base, unl = [-1.00, -1.20, -0.90], [-1.05, -1.18, -0.92]  # drops +0.05, -0.02, +0.02
    noise = drop_noise(base, unl)
    assert noise == pytest.approx(2 * statistics.stdev([0.05, -0.02, 0.02]) / 3**0.5)
    assert noise > 0.0167  # the mean drop
    few = Recovery("recovery:clamp", -1.1, -5.0, floor=LOST_FLOOR)
    apply_floor([few], unlearned=-1.0167, base=-1.0, noise=noise)
    assert few.recovered is None and few.floor == noise
    assert drop_noise([-1.0], [-2.0]) == 0.0  # one question: no scatter to measure


def test_eval_page_is_a_report_to_send(results, tmp_path):
    report = results["eval"]
    page = report.write_html(tmp_path / "r.html").read_text()
    verdicts = page.split("<h2>Verdicts</h2>")[1].split("<h2>")[0]
    assert verdicts.count("<tr>") == 1 + 4 and "<pre" not in verdicts
    assert page.count("class='card'") == 4
    assert "<details><summary>Settings</summary>" in page and page.count("<pre>") == 1
    for axis in ("change percentile among all vectors", "relative change of down_proj",
                 "share of lost forget-QA log p recovered", "mean MLP activation"):  # fmt: skip
        assert axis in page, axis
    assert page.count("plotly.js v") == 1  # the library inlined once
    before = results["eval"].runs[0].concepts[0].vector.top_before[0]
    assert json.dumps(before).replace('"', "&quot;") in page or before.isspace()
    assert TOO_LITTLE in page  # the base against itself: nothing lost, no ratio
    weights_only = results["eval_weights_only"].write_html(tmp_path / "w.html").read_text()
    assert "verdict' style" in weights_only
    labels = [c.label for run in results["eval_weights_only"].runs for c in run.concepts]
    assert "intact" not in labels and "not measured" in labels  # no trace: never "intact"
    assert ">intact</span>" not in weights_only
    assert "Activation trace: not measured." in weights_only


def _screenshot(html: Path, png: Path, height: int) -> None:
    png.unlink(missing_ok=True)
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=5000", f"--window-size=1100,{height}",
         f"--screenshot={png}", html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not on PATH (apt-get install chromium); with CI set this test fails",
)
def test_screenshots_of_every_figure_and_the_eval_page(results):
    """Draws every figure and the eval page in Chromium; the PNGs are the artifacts to look
    at (``build/artifacts/screenshots``)."""
    if CHROMIUM is None:
        pytest.fail("CI is set but chromium is not on PATH; install it (apt-get install chromium)")
    out = ARTIFACTS / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    pages = {}
    for name, r in results.items():
        pages[name] = out / f"{name}.html"
        r.plot().write_html(pages[name], include_plotlyjs=True)
    pages["eval_page"] = results["eval"].write_html(out / "eval_page.html", overwrite=True)
    for name, html in pages.items():
        png = out / f"{name}.png"
        _screenshot(html, png, 3200 if name == "eval_page" else 1300)
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, f"{name}: blank?"
