"""Fill the generated blocks of a markdown doc, so that its numbers come from a script.

A block is ``<!-- generated: NAME -->`` ... ``<!-- /generated: NAME -->``; :func:`fill`
replaces what lies between the two markers with the script's text for ``NAME``. A doc that
names a block the script does not make, or the script a block the doc lacks, is an error
(unless ``shared``: a doc several scripts fill, such as ``benchmarks/RESULTS.md``, keeps the
blocks of the others as they are).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_BLOCK = re.compile(r"(<!-- generated: ([\w.-]+) -->\n)(.*?)(<!-- /generated: \2 -->)", re.S)


def fill(doc: str, blocks: dict[str, str], shared: bool = False) -> str:
    """Return ``doc`` with every generated block replaced by ``blocks[NAME]`` (``shared``:
    blocks of other scripts left as they are)."""
    seen: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in blocks and shared:
            return m.group(0)
        if name not in blocks:
            raise SystemExit(f"error: the doc has a block {name!r} that the script does not make")
        seen.add(name)
        return m.group(1) + blocks[name].rstrip("\n") + "\n" + m.group(4)

    out = _BLOCK.sub(sub, doc)
    missing = sorted(set(blocks) - seen)
    if missing:
        raise SystemExit(f"error: the doc lacks the generated blocks {missing}; add their markers")
    return out


def write_or_check(
    doc_path: Path, blocks: dict[str, str], check: bool, shared: bool = False
) -> int:
    """Write the filled doc through a temp file and a rename, or with ``check`` return 1 (and
    say so) when the committed doc differs from what the script makes."""
    doc = doc_path.read_text(encoding="utf-8")
    new = fill(doc, blocks, shared)
    if check:
        if new != doc:
            print(f"{doc_path} differs from the script's output; rerun without --check")
            return 1
        return 0
    tmp = doc_path.with_name(f".{doc_path.name}.tmp{os.getpid()}")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, doc_path)
    print(f"wrote {doc_path}", file=sys.stderr)
    return 0
