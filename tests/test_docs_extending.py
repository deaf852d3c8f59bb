"""docs/extending.md runs as written: its Python blocks, in order, in one namespace, on a tiny
random Llama; and docs/README.md links every reference page and notebook that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conceptvec.data import concepts_file
from conceptvec.evaluate import ATTACKS, METRICS
from conceptvec.models.backends import backends
from conceptvec.unlearning import METHODS

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "extending.md"


def python_blocks(path: Path) -> list[str]:
    """Return the ```python blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.fixture
def registered():
    """Unregister what the guide registers after the test; its backend stops claiming."""
    before = set(backends())
    yield
    for registry, name in ((METHODS, "scaled-ga"), (ATTACKS, "noise"), (METRICS, "norm_ratio")):
        if name in registry:
            registry.remove(name)
    for cls in set(backends()) - before:
        cls.claims = classmethod(lambda _cls, _obj: False)  # type: ignore[method-assign]


def test_the_guide_has_a_tested_example_for_each_extension_point():
    headings = re.findall(r"^## (.+)$", GUIDE.read_text(), flags=re.M)
    for part in ("An unlearning method", "An attack", "A metric", "A backend", "A model family"):
        assert part in headings, part
    assert len(python_blocks(GUIDE)) == 5


def test_the_guide_runs(tiny_dir, tmp_path, registered, capsys):
    recs = [
        {**r, "Layer": 2, "Dim": 7}
        for r in json.loads(concepts_file("conceptvectors-dev").read_text())
        if r["Concept"] == "Ancient Rome"
    ]
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps(recs))
    (tmp_path / "out").mkdir()
    namespace = {"model_dir": tiny_dir("llama"), "concepts": concepts, "out": tmp_path / "out"}
    for n, block in enumerate(python_blocks(GUIDE), 1):
        exec(compile(block, f"{GUIDE.name} block {n}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "scaled-ga" in printed and "noise" in printed and "norm_ratio" in printed
    record = json.loads((tmp_path / "out" / "scaled-ga" / "unlearning.json").read_text())
    assert record["method"] == "scaled-ga"


def test_the_index_links_every_page_and_notebook():
    index = (ROOT / "docs" / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    notebooks = {f"../notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert pages <= links, pages - links
    assert notebooks <= links, notebooks - links
    for link in links:
        assert (ROOT / "docs" / link).exists(), link
    tutorials, reference = index.split("## Reference")
    assert "notebooks/" in tutorials and "notebooks/" not in reference
