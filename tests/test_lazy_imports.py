"""Importing conceptvec, and each CLI command, imports only what is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import conceptvec

from .conftest import build_tiny
from .tiny_gguf import write_tiny_gguf

HEAVY = ("torch", "transformers", "numpy", "gguf", "safetensors")


def heavy_imports(code: str, env: dict | None = None) -> list[str]:
    """Return the HEAVY modules a fresh interpreter has imported after running ``code``."""
    report = f"import json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    probe = textwrap.dedent(code) + "\n" + report
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_conceptvec_and_its_help_import_nothing_heavy():
    assert heavy_imports("import conceptvec") == []
    help_run = """
        import sys
        from conceptvec.cli import main
        sys.argv = ["conceptvec", "--help"]
        try:
            main()
        except SystemExit:
            pass
    """
    assert heavy_imports(help_run) == []


def test_every_public_name_still_imports():
    for name in conceptvec.__all__:
        exec(f"from conceptvec import {name}", {})
        assert getattr(conceptvec, name) is not None
    assert callable(conceptvec.evaluate.intrinsic)
    assert conceptvec.__version__
    assert "load" in dir(conceptvec)


def test_no_module_shadows_a_public_name():
    """A module named like a function its package exports (``decode.py`` beside ``decode``)
    replaces the function on the package once imported; no package has one."""
    import importlib

    root = Path(conceptvec.__file__).parent
    for init in [root / "__init__.py", *root.glob("*/__init__.py"), *root.glob("*/*/__init__.py")]:
        package = ".".join(init.parent.relative_to(root.parent).parts)
        module = importlib.import_module(package)
        names = set(getattr(module, "__all__", ()))
        children = {p.stem for p in init.parent.glob("*.py")} | {
            p.parent.name for p in init.parent.glob("*/__init__.py")
        }
        functions = {n for n in names & children if callable(getattr(module, n))}
        assert not functions, f"{package}: {functions} are both a module and a function"
    probe = """
        import conceptvec
        import conceptvec.decoding, conceptvec.models.loading
        from conceptvec import decode, load
        assert callable(conceptvec.decode) and decode is conceptvec.decode
        assert callable(conceptvec.models.load) and load is conceptvec.load
    """
    heavy_imports(probe)


def test_the_table_of_contents_is_short_and_old_names_still_resolve():
    assert len(conceptvec.__all__) <= 35
    for name in ("dose_response", "zero_weights", "evaluate_qa", "decode_many", "project"):
        assert callable(getattr(conceptvec, name)) and name not in conceptvec.__all__


def test_warm_gguf_search_and_decode_need_neither_transformers_nor_the_tokenizer(tmp_path):
    hf, tok = build_tiny("llama")
    gguf = write_tiny_gguf(hf, tok, tmp_path / "tiny.gguf", quantize_head=True)
    works = ('conceptvec.search_weights(m, "dog")', 'conceptvec.decode(m, "L1.3")')
    for n, work in enumerate(works):
        env = {**os.environ, "CONCEPTVEC_CACHE": str(tmp_path / f"cache{n}")}
        code = f"import conceptvec\nm = conceptvec.load({str(gguf)!r}, quiet=True)\n{work}"
        assert "transformers" in heavy_imports(code, env)  # the first time converts the GGUF
        assert "transformers" not in heavy_imports(code, env)


def test_lower_layers_import_nothing_above_them():
    """Reading an atlas's identity needs neither the package root's public names nor the
    layers above atlas; no command module imports the CLI that registers it."""
    probe = """
        import sys
        import conceptvec.atlas.identity
        import conceptvec.commands.atlas, conceptvec.commands.intervene, conceptvec.commands.concepts
        import conceptvec.commands.unlearn, conceptvec.commands.evaluate, conceptvec.commands.plugins
        import conceptvec.commands.activations
        import conceptvec
        above = ("conceptvec.cli", "conceptvec.interventions", "conceptvec.concepts", "conceptvec.viz")
        assert not [m for m in above if m in sys.modules], [m for m in above if m in sys.modules]
        assert not set(conceptvec._HOME) & set(vars(conceptvec)), "a public name was resolved"
    """
    heavy_imports(probe)
    root = Path(conceptvec.__file__).parent
    for path in root.rglob("*.py"):
        if path == root / "__init__.py":
            continue
        text = path.read_text()
        assert "from conceptvec.cli import" not in text, path  # cli <-> commands
        public = [n for n in conceptvec.__all__ if f"from conceptvec import {n}" in text]
        assert not public and "conceptvec.__version__" not in text, path  # importlib.metadata
