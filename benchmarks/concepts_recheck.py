"""Apply the file-wide category check to a built concepts file, in place, and say what changed.

    python benchmarks/concepts_recheck.py conceptvec/data/smollm2_concepts_dev.json

``conceptvec concepts build`` runs the same check (:func:`conceptvec.concepts.category.check_file`)
at the end of every build; this script re-derives the verdicts of a file built before the check
existed from the evidence it recorded, without rerunning the finder.
"""

from __future__ import annotations

import sys

from conceptvec.concepts import read_concepts, write_concepts
from conceptvec.concepts.category import check_file
from conceptvec.data import resolve_concepts


def _pick(row) -> str:
    where = "-" if row.layer is None else f"L{row.layer}.{row.dim}"
    return f"{where} {row.extra.get('verdict')}"


def main(path: str) -> None:
    file = resolve_concepts(path)
    rows = read_concepts(file)
    checked = check_file(rows)
    for old, new in zip(rows, checked):
        if old.to_dict() != new.to_dict():
            shared = [
                f"{o['neuron']} (also {', '.join(o['shared_with'])})"
                for o in new.extra["conceptvec"]["others"]
                if o.get("shared_with")
            ]
            print(f"{old.concept}: {_pick(old)} -> {_pick(new)}; shared: {'; '.join(shared)}")
    write_concepts(checked, file, overwrite=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2-dev")
