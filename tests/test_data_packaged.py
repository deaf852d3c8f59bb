"""Packaged concepts files (``conceptvec.data``): read by name, in a clone and from a wheel."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conceptvec.concepts import read_concepts
from conceptvec.data import PACKAGED_CONCEPTS, concepts_file, resolve_concepts
from conceptvec.errors import AtlasError, BadConceptFileError
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_packaged_name_reads_the_ten_dev_concepts():
    names = {}
    for name in PACKAGED_CONCEPTS:
        entries = read_concepts(name)
        names[name] = [e.concept for e in entries]
        assert len(entries) == 10 and all(e.qa for e in entries), name
    assert names["smollm2-dev"] == names["conceptvectors-dev"]
    smol = read_concepts("smollm2-dev")
    assert {e.layer for e in smol if e.layer is not None} <= set(range(30))  # SmolLM2's layers
    assert all("conceptvec" in e.extra for e in smol)


def test_a_path_that_exists_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("smollm2-dev").write_text(json.dumps([{"Concept": "Mine", "QA": ["q?"]}]))
    assert [e.concept for e in read_concepts("smollm2-dev")] == ["Mine"]
    assert resolve_concepts("conceptvectors-dev") == concepts_file("conceptvectors-dev")


def test_unknown_name_names_the_packaged_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadConceptFileError, match="smollm2-dev") as e:
        read_concepts("smollm2-devv")
    assert "\n" not in str(e.value)
    with pytest.raises(KeyError, match="conceptvectors-dev"):
        concepts_file("nope")


def test_cli_reads_a_packaged_name(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing called conceptvectors-dev here
    out = tmp_path / "rome"
    args = ["unlearn", str(tiny_dir("llama")), "--concept", "Ancient Rome", "--concepts",
            "conceptvectors-dev", "--out", str(out), "--method", "ga", "--steps", "1",
            "--batch-size", "2", "--max-length", "32", "--no-eval", "--json"]  # fmt: skip
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)["concept"] == {"name": "Ancient Rome", "source": "conceptvectors-dev"}


def test_missing_pyarrow_is_one_line_before_any_work(tiny_dir, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    from conceptvec.atlas.export import require_pyarrow

    with pytest.raises(AtlasError, match=r"conceptvec\[parquet\]"):
        require_pyarrow()
    out = tmp_path / "atlas"
    code, _, err = run_cli(
        ["map", str(tiny_dir("llama")), "--out", str(out), "--export", "parquet", "-q"],
        monkeypatch,
        capsys,
    )
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "pyarrow" in lines[0], err
    assert not out.exists()  # refused before the atlas was built
    # the default export is parquet only when pyarrow is there: without it, map still works
    code, stdout, err = run_cli(["map", str(tiny_dir("llama")), "--out", str(out), "-q"],
                                monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert "export:" not in stdout and not (out / "atlas.parquet").exists()


@pytest.mark.slow
@pytest.mark.real_model
def test_a_wheel_runs_eval_with_a_packaged_concepts_file(tmp_path):
    """Build the wheel, install it (no deps) into a venv over this environment, and run
    ``conceptvec eval ... --concepts smollm2-dev`` from a folder with no repository files."""
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # a copy: the build writes build/
    skip = shutil.ignore_patterns(
        ".git", "build", "dist", "runs", ".venv", "*.egg-info", "__pycache__", ".*"
    )
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(wheels.glob("conceptvec-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         "--ignore-installed", str(wheel)],  # into the venv; the outer copy is left alone
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(py), "-c", "import conceptvec, conceptvec.data as d; print(conceptvec.__file__); "
         "print(d.concepts_file('smollm2-dev'))"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(str(env_dir) in w for w in where), where  # the wheel's copy, not the checkout
    r = subprocess.run(
        [str(env_dir / "bin" / "conceptvec"), "eval", "smollm2-135m", "smollm2-135m",
         "--concepts", "smollm2-dev", "--concept", "Ancient Rome", "--no-qa", "--no-trace",
         "--json"],
        cwd=work, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert "L29.1518" in json.dumps(report)


def test_no_neuron_is_the_vector_of_two_concepts_in_the_packaged_file():
    rows = read_concepts("smollm2-dev")
    picks = [(e.layer, e.dim) for e in rows if e.layer is not None]
    assert len(picks) == len(set(picks)), picks
    from conceptvec.concepts.category import check_file

    assert [r.to_dict() for r in check_file(rows)] == [r.to_dict() for r in rows]  # checked


def test_the_concepts_table_in_the_docs_is_the_packaged_files(capsys):
    """docs/concepts.md holds exactly what benchmarks/concepts_table.py prints for the file."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import concepts_table
    finally:
        sys.path.pop(0)
    concepts_table.main("smollm2-dev")
    table = capsys.readouterr().out
    doc = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    start = doc.index("<!-- concepts-table:")
    inside = doc[doc.index("\n", start) + 1 : doc.index("<!-- /concepts-table -->")]
    assert inside == table
