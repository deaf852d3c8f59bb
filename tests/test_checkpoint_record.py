"""``unlearning.json`` as one dataclass: the writer and evaluate's reader share it, and a
record in an older format (a bare concept name, no config, keys this version does not know)
still reads and writes back unchanged."""

from __future__ import annotations

import json

from conceptvec.checkpoint_record import RECORD_FILE, UnlearningRecord
from conceptvec.evaluate.run import _record, _shared_heldout, _summary

OLD = {
    "schema": 1,
    "method": "gd",
    "lr": 3e-5,
    "seed": 4,
    "scope": "full",
    "concept": "Ancient Rome",  # early records named the concept as a string
    "steps_done": 3,
    "data": {"heldout_qa": ["Who founded Rome?", 7], "heldout_unrelated_qa": ["Why?"]},
    "from_the_future": {"kept": True},
}


def test_old_record_reads_and_round_trips(tmp_path):
    r = UnlearningRecord.from_dict(OLD)
    assert r.concept_name == "Ancient Rome" and r.method == "gd" and r.config == {}
    assert r.heldout() == (["Who founded Rome?"], ["Why?"])  # a non-string question dropped
    assert r.extra == {"from_the_future": {"kept": True}}
    (tmp_path / RECORD_FILE).write_text(json.dumps(OLD))
    again = UnlearningRecord.read(tmp_path)
    assert again is not None and again.to_dict()["from_the_future"] == {"kept": True}
    r.write(tmp_path)
    back = json.loads((tmp_path / RECORD_FILE).read_text())
    assert back["concept"] == {"name": "Ancient Rome"} and back["from_the_future"]["kept"]
    assert "evaluation" not in back and "files" not in back  # unset optional keys left out


def test_evaluate_reads_the_record_by_fields(tmp_path):
    (tmp_path / RECORD_FILE).write_text(json.dumps(OLD))
    rec = _record(tmp_path)
    assert isinstance(rec, UnlearningRecord)
    held, source = _shared_heldout([None, rec], "ancient rome")
    assert held == {"qa": ["Who founded Rome?"], "unrelated": ["Why?"]}
    assert source == "gd (seed 4)"
    assert _shared_heldout([rec], "Italy") == (None, "")
    s = _summary(rec)
    assert s["method"] == "gd" and s["concept"] == "Ancient Rome" and s["steps_done"] == 3
    assert _summary(None) == {} and _record(tmp_path / "nowhere") is None
    (tmp_path / RECORD_FILE).write_text("[1, 2]")  # not an object: no record, no crash
    assert _record(tmp_path) is None
