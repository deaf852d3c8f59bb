"""The ConceptVectors file format: read, write, round trips in both styles, and bad input."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import conceptvec.concepts.benchmark as benchmark
from conceptvec.concepts import ConceptEntry, TextCompletion, read_concepts, write_concepts
from conceptvec.data import concepts_file
from conceptvec.errors import BadConceptFileError, ConceptvecError

SAMPLE = concepts_file("conceptvectors-dev")
SHARED = Path(__file__).parents[1] / ".." / "shared" / "data" / "conceptvectors"
SHARED_SAMPLE = SHARED / "llama2-7b_concepts_dev.json"


def _records() -> list[dict]:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def _as_strings(records: list[dict]) -> list[dict]:
    """The sample as the released LLaMA file stores it: numbers and lists as strings."""
    out = []
    for rec in records:
        rec = dict(rec)
        for key in ("Layer", "Dim", "id"):
            if key in rec:
                rec[key] = str(rec[key])
        for key in ("QA", "unrelated_QA", "text_completion"):
            rec[key] = str(rec[key])
        out.append(rec)
    return out


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- round trips --------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_SAMPLE.is_file(), reason="shared/ sample not present")
def test_in_repo_copy_is_the_shared_sample():
    assert SAMPLE.read_bytes() == SHARED_SAMPLE.read_bytes()


def test_sample_reads_as_ten_concepts():
    entries = read_concepts(SAMPLE)
    assert [e.concept for e in entries][:3] == ["Poland", "Italy", "Baseball"]
    assert len(entries) == 10
    poland, italy = entries[0], entries[1]
    assert (poland.layer, poland.dim, poland.id) == (23, 743, None)
    assert italy.id == 94 and isinstance(italy.layer, int)
    assert all(len(e.qa) == 10 and len(e.unrelated_qa) == 50 for e in entries)
    assert all(isinstance(tc, TextCompletion) for e in entries for tc in e.text_completion)
    assert "Łódź" in poland.wikipedia_content
    assert poland.extra == {}


def test_plain_round_trip_is_byte_identical(tmp_path):
    entries = read_concepts(SAMPLE)
    out = write_concepts(entries, tmp_path / "out.json")
    assert out.read_bytes() == SAMPLE.read_bytes()
    assert read_concepts(out) == entries
    assert json.loads(out.read_text(encoding="utf-8")) == _records()


def test_strings_round_trip_keeps_the_source_style(tmp_path):
    src = _write_json(tmp_path / "strings.json", _as_strings(_records()))
    entries = read_concepts(src)
    assert entries == read_concepts(SAMPLE)  # same records whichever way they were stored
    out = write_concepts(entries, tmp_path / "out.json")
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(src.read_text("utf-8"))
    assert read_concepts(out) == entries


def test_write_in_strings_style(tmp_path):
    entries = read_concepts(SAMPLE)
    out = write_concepts(entries, tmp_path / "llama.json", style="strings")
    rec = json.loads(out.read_text(encoding="utf-8"))[0]
    assert rec["Layer"] == "23" and rec["Dim"] == "743"
    assert isinstance(rec["QA"], str) and ast.literal_eval(rec["QA"]) == entries[0].qa
    assert ast.literal_eval(rec["unrelated_QA"]) == entries[0].unrelated_qa
    assert isinstance(rec["text_completion"], list)  # read either way; written as JSON
    assert list(rec) == list(_records()[0])  # the source's key order
    back = read_concepts(out)
    assert back == entries
    plain = write_concepts(back, tmp_path / "plain.json", style="plain")
    assert plain.read_bytes() == SAMPLE.read_bytes()


def test_changed_values_are_written_fresh_in_the_source_style(tmp_path):
    src = _write_json(tmp_path / "strings.json", _as_strings(_records()))
    entry = read_concepts(src)[0]
    entry.qa.append(" A new question?\n")
    entry.layer = 0
    rec = entry.to_dict()
    assert rec["Layer"] == "0" and rec["Dim"] == "743"
    assert rec["QA"] == repr(entry.qa) and ast.literal_eval(rec["QA"])[-1] == " A new question?\n"


def test_extra_keys_are_kept_verbatim_and_in_order(tmp_path):
    records = _records()[:2]
    records[0]["verdict"] = "concept"
    records[0] = {"source_layer": 23, **records[0], "evidence": {"auroc": 0.9, "ok": [1, 2]}}
    src = _write_json(tmp_path / "ours.json", records)
    entries = read_concepts(src)
    assert entries[0].extra == {
        "source_layer": 23,
        "verdict": "concept",
        "evidence": {"auroc": 0.9, "ok": [1, 2]},
    }
    out = write_concepts(entries, tmp_path / "out.json")
    assert out.read_bytes() == src.read_bytes()
    entries[1].extra["verdict"] = "category"  # a new key goes last
    assert list(entries[1].to_dict())[-1] == "verdict"


def test_id_and_dimension_spellings_are_kept():
    rec = {"ID": "7", "Concept": "Rome", "Layer": 3, "Dimension": 11, "QA": ["Q?"]}
    (entry,) = read_concepts([rec])
    assert (entry.id, entry.layer, entry.dim) == (7, 3, 11)
    assert entry.to_dict() == rec
    assert entry.to_dict(style="strings")["Dimension"] == "11"


def test_new_entries_use_the_released_llama_style():
    entry = ConceptEntry("Ancient Rome", layer=29, dim=1518, qa=["Who was Caesar?"])
    rec = entry.to_dict()
    assert rec == {
        "Concept": "Ancient Rome",
        "Layer": "29",
        "Dim": "1518",
        "QA": "['Who was Caesar?']",
        "wikipedia_content": "",
        "text_completion": [],
        "unrelated_QA": "[]",
    }
    assert read_concepts([rec])[0] == entry
    assert ConceptEntry("X", layer=0, dim=0).to_dict(style="plain")["Layer"] == 0


def test_reading_a_list_copies_it():
    records = _records()[:1]
    entry = read_concepts(records)[0]
    entry.qa.clear()
    entry.text_completion[0].first_half = "changed"
    assert len(records[0]["QA"]) == 10
    assert records[0]["text_completion"][0]["First_half"] != "changed"


def test_to_dict_does_not_share_values_with_the_entry():
    entry = ConceptEntry("Rome", qa=["Q?"], extra={"evidence": {"auroc": [0.9]}})
    rec = entry.to_dict(style="plain")
    rec["QA"].append("x")
    rec["evidence"]["auroc"].append(0.1)
    assert entry.qa == ["Q?"] and entry.extra == {"evidence": {"auroc": [0.9]}}


def test_str_is_readable():
    text = str(read_concepts(SAMPLE)[1])
    assert text.splitlines()[0] == "Italy (L25.7966, id 94)"
    assert "QA: 10 questions" in text and "unrelated QA: 50" in text
    assert str(ConceptEntry("Rome", layer=3)).startswith("Rome (no vector)")


# --- bad input ----------------------------------------------------------------------------

GOOD = {"Concept": "Rome", "Layer": 1, "Dim": 2, "QA": ["Q?"]}


def _rec(**changes):
    rec = {**GOOD, **changes}
    return {k: v for k, v in rec.items() if v is not ...}


BAD_RECORDS = {
    "missing Concept": ([_rec(Concept=...)], ["record 0", "'Concept'"]),
    "empty Concept": ([_rec(Concept=" ")], ["record 0", "'Concept'"]),
    "missing QA": ([GOOD, _rec(QA=...)], ["record 1 ('Rome')", "'QA'"]),
    "QA not a list": ([_rec(QA="just a question?")], ["record 0 ('Rome')", "'QA'", "not a list"]),
    "QA a dict": ([_rec(QA={"q": 1})], ["'QA'", "not a list"]),
    "QA of numbers": ([_rec(QA=[1, 2])], ["'QA'", "expected strings"]),
    "QA string of numbers": ([_rec(QA="[1, 2]")], ["'QA'", "expected strings"]),
    "QA string of a call": ([_rec(QA="__import__('os').getcwd()")], ["'QA'", "not a list"]),
    "unrelated_QA not a list": ([_rec(unrelated_QA="nope")], ["'unrelated_QA'"]),
    "Layer not numeric": ([_rec(Layer="twenty")], ["'Layer'", "non-negative integer"]),
    "Layer negative": ([_rec(Layer=-1)], ["'Layer'"]),
    "Layer bool": ([_rec(Layer=True)], ["'Layer'"]),
    "Dim float": ([_rec(Dim=1.5)], ["'Dim'"]),
    "ID not numeric": ([_rec(ID="x")], ["'ID'"]),
    "text_completion item": (
        [_rec(text_completion=[{"First_half": "a"}])],
        ["'text_completion' item 0", "Second_half"],
    ),
    "wikipedia_content": ([_rec(wikipedia_content=3)], ["'wikipedia_content'"]),
    "record not an object": ([GOOD, "Rome"], ["record 1", "str"]),
    "empty list": ([], ["empty list"]),
    "one object": (GOOD, ["one JSON object", "list"]),
    "a number": (3, ["int"]),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_bad_records_raise_one_line(tmp_path, case):
    data, fragments = BAD_RECORDS[case]
    path = _write_json(tmp_path / "bad.json", data)
    before = _listing(tmp_path)
    with pytest.raises(BadConceptFileError) as e:
        read_concepts(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    for fragment in fragments:
        assert fragment in msg
    assert _listing(tmp_path) == before


def _fifo(tmp: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp / "pipe.json")
    return tmp / "pipe.json"


BAD_FILES = {
    "malformed JSON": (lambda t: _put(t, b'[{"Concept": "Rome",'), "not valid JSON"),
    "empty file": (lambda t: _put(t, b""), "is empty"),
    "blank file": (lambda t: _put(t, b" \n\t\n"), "is empty"),
    "not UTF-8": (lambda t: _put(t, b'[{"Concept": "\xff"}]'), "not UTF-8"),
    "missing file": (lambda t: t / "nowhere.json", "does not exist"),
    "folder": (lambda t: (t / "dir.json").mkdir() or t / "dir.json", "is a folder"),
    "FIFO": (_fifo, "not a regular file"),
    "device": (lambda t: Path(os.devnull), "not a regular file"),
}


def _put(tmp: Path, data: bytes) -> Path:
    (tmp / "bad.json").write_bytes(data)
    return tmp / "bad.json"


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_one_line(tmp_path, case):
    make, fragment = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(BadConceptFileError, match=fragment) as e:
        read_concepts(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert isinstance(e.value, ConceptvecError) and isinstance(e.value, ValueError)


def test_size_cap_is_checked_before_reading(tmp_path, monkeypatch):
    path = _write_json(tmp_path / "big.json", [GOOD])
    monkeypatch.setattr(benchmark, "MAX_FILE_BYTES", 10)
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("opened a file over the cap"))
    with pytest.raises(BadConceptFileError, match="over the 10-byte limit"):
        read_concepts(path)


def test_literal_eval_never_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payloads = [
        "__import__('pathlib').Path('PWNED').touch()",
        "[__import__('pathlib').Path('PWNED').touch()]",
        "[' ok', open('PWNED', 'w')]",
        "(lambda: __import__('os').system('touch PWNED'))()",
    ]
    for payload in payloads:
        with pytest.raises(BadConceptFileError, match="'QA'"):
            read_concepts([_rec(QA=payload)])
    assert not (tmp_path / "PWNED").exists()


def test_read_refuses_a_dict_and_other_types():
    with pytest.raises(BadConceptFileError, match=r"pass a list of records, \[record\]"):
        read_concepts(GOOD)
    with pytest.raises(BadConceptFileError, match="not int"):
        read_concepts(3)


# --- writing ------------------------------------------------------------------------------


def test_write_refuses_an_existing_path(tmp_path):
    entries = read_concepts([GOOD])
    path = tmp_path / "out.json"
    path.write_text("keep me")
    with pytest.raises(BadConceptFileError, match="exists; pass overwrite=True") as e:
        write_concepts(entries, path)
    assert "\n" not in str(e.value)
    assert path.read_text() == "keep me" and _listing(tmp_path) == {"out.json": b"keep me"}
    write_concepts(entries, path, overwrite=True)
    assert read_concepts(path) == entries
    assert sorted(_listing(tmp_path)) == ["out.json"]


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ([], "no concepts to write"),
        (["Rome"], "entry 0 is a str"),
        ([ConceptEntry("Rome"), ConceptEntry("NHS", layer=-1)], "entry 1: concept 'NHS'"),
        ([ConceptEntry("Rome", qa="Q?")], "qa must be a list of str"),
        ([ConceptEntry("Rome", text_completion=[{"First_half": "a"}])], "TextCompletion"),
        ([ConceptEntry("")], "non-empty string"),
        ([ConceptEntry("Rome", extra={"Layer": 3})], "extra key 'Layer' clashes"),
        ([ConceptEntry("Rome", extra={"auroc": float("nan")})], "cannot be stored as JSON"),
        ([ConceptEntry("Rome", extra={"s": {1, 2}})], "cannot be stored as JSON"),
    ],
)
def test_write_refuses_bad_entries_and_writes_nothing(tmp_path, entries, fragment):
    with pytest.raises(BadConceptFileError, match=fragment) as e:
        write_concepts(entries, tmp_path / "out.json")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_bad_paths_and_styles(tmp_path):
    entries = [ConceptEntry("Rome")]
    with pytest.raises(BadConceptFileError, match="does not exist"):
        write_concepts(entries, tmp_path / "missing" / "out.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(BadConceptFileError, match="is a folder"):
        write_concepts(entries, tmp_path / "dir.json", overwrite=True)
    with pytest.raises(BadConceptFileError, match="unknown style 'llama'"):
        write_concepts(entries, tmp_path / "out.json", style="llama")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.json"]


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(BadConceptFileError, match="No space left") as e:
        write_concepts([ConceptEntry("Rome")], path, overwrite=True)
    assert "\n" not in str(e.value)
    assert _listing(tmp_path) == {"out.json": b"old"}


def test_a_path_that_appears_meanwhile_is_not_clobbered(tmp_path, monkeypatch):
    path = tmp_path / "out.json"

    def racing_link(src, dst):
        Path(dst).write_text("theirs")
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(BadConceptFileError, match="exists"):
        write_concepts([ConceptEntry("Rome")], path)
    assert _listing(tmp_path) == {"out.json": b"theirs"}


def test_written_file_keeps_non_ascii_and_indent(tmp_path):
    entry = ConceptEntry("Łódź", qa=["Gdzie jest Łódź?"])
    text = write_concepts([entry], tmp_path / "out.json").read_text(encoding="utf-8")
    assert "Łódź" in text and '\n    {\n        "Concept"' in text
    mask = os.umask(0o22)
    os.umask(mask)
    assert os.stat(tmp_path / "out.json").st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
