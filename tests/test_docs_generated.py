"""The docs' measured numbers are the scripts' output over docs/data (issue 20, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_evaluation_md_equals_eval_table_output(capsys):
    import eval_table

    assert eval_table.main(["--check"]) == 0, capsys.readouterr().out


def test_fill_replaces_only_marked_blocks_and_refuses_unknown_names():
    import docgen

    doc = "a 1\n<!-- generated: x -->\nold\n<!-- /generated: x -->\nb 2\n"
    assert docgen.fill(doc, {"x": "new"}) == doc.replace("old", "new")
    with pytest.raises(SystemExit):
        docgen.fill(doc, {"y": "new"})
    with pytest.raises(SystemExit):
        docgen.fill(doc, {"x": "new", "y": "more"})


def test_a_changed_number_in_the_data_changes_the_doc(tmp_path):
    import eval_table

    entries = eval_table.load(eval_table.DATA)
    before = eval_table.blocks(entries)
    entries[0]["c"]["vector"]["change_pct_model"] = 12.345
    after = eval_table.blocks(entries)
    assert "12.3" in after["eval-table"] and before["eval-table"] != after["eval-table"]


def test_kept_tokens_from_jaccard():
    import eval_table

    assert round(eval_table.kept_of_k(0.951219512195, 200)) == 195
    assert round(eval_table.kept_of_k(1.0, 200)) == 200


def test_concepts_md_equals_finder_atlas_check_output(capsys):
    import finder_atlas_check

    assert finder_atlas_check.main(["--check"]) == 0, capsys.readouterr().out


def test_a_changed_rank_changes_the_finder_atlas_block():
    import json

    import finder_atlas_check

    data = json.loads(finder_atlas_check.DATA.read_text())
    before = finder_atlas_check.blocks(data)["finder-atlas"]
    row = data["concepts"][0]
    row["rank_without"], row["rank_with"] = 9, 1  # moved up from 9 into the top 3
    after = finder_atlas_check.blocks(data)["finder-atlas"]
    assert after != before and f"| {row['concept']} | {row['neuron']} |" in after
    flat = " ".join(after.split())  # the prose is wrapped
    assert "| 9 | 1 |" in flat and "entered the top 3 (the default `--validate`) for 1" in flat
