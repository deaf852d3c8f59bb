"""Reading files that came from someone else: regular files only, bounded reads, no escapes.

Checkpoints and atlases are downloaded from the internet, so a path in them may point at
``/dev/zero``, a FIFO, another folder or a huge file. Every reader here checks what it is
about to open first:

- :func:`regular_file` refuses anything but a regular file (after following symlinks), so a
  FIFO never blocks and a device is never read;
- :func:`read_bounded` reads at most ``limit`` bytes and refuses a longer file;
- :func:`confined` resolves a path (symlinks included) and refuses one outside its folder.

Each raises the :class:`ConceptvecError` subclass its caller names, with a one-line fix.

Writing goes the other way: :func:`write_new` writes an output file through a synced
temporary file, and never replaces an existing file unless asked to.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConceptvecError

JSON_LIMIT = 64 << 20
"""The largest JSON file read (config, index, manifest, vocabulary): 64 MiB."""


def regular_file(path: str | Path, error: type[ConceptvecError], what: str) -> os.stat_result:
    """Return ``path``'s stat if it is a regular file (symlinks followed), else raise ``error``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path} does not exist; {what}") from None
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e}); {what}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise error(f"{path} is {kind} (a device, pipe or socket is never read); {what}")
    return st


def read_bounded(
    path: str | Path, error: type[ConceptvecError], what: str, limit: int = JSON_LIMIT
) -> bytes:
    """Return the bytes of the regular file ``path`` if it holds at most ``limit`` bytes."""
    regular_file(path, error, what)
    try:
        # O_NONBLOCK: should the file be swapped for a FIFO after the check, open() returns
        # at once instead of waiting for a writer, and fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e}); {what}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file; {what}")
        if st.st_size > limit:
            raise error(f"{path} has {st.st_size} bytes, more than the {limit} expected; {what}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path} has more than {limit} bytes; {what}")
    return data


def read_json(
    path: str | Path, error: type[ConceptvecError], what: str, limit: int = JSON_LIMIT
) -> Any:
    """Return the JSON value in ``path`` (a regular file of at most ``limit`` bytes)."""
    data = read_bounded(path, error, what, limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        text = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise error(f"{path} is not valid JSON ({text}); {what}") from None


def confined(root: str | Path, relative: Any, error: type[ConceptvecError], what: str) -> Path:
    """Return ``root / relative`` resolved, if it stays inside ``root`` after symlinks.

    An absolute path, ``..`` steps or a symlink leading out of ``root`` raise ``error``.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise error(f"{root}: file name {relative!r} is not a relative path; {what}")
    base = Path(root).resolve()
    if Path(relative).is_absolute():
        raise error(f"{root}: {relative!r} is an absolute path, not inside the folder; {what}")
    full = (base / relative).resolve()
    if full != base and base not in full.parents:
        raise error(f"{root}: {relative!r} leads outside the folder (to {full}); {what}")
    return full


def confine_folder(
    folder: str | Path, root: str | Path, error: type[ConceptvecError], what: str
) -> None:
    """Raise ``error`` if any entry of ``folder`` is a symlink leading outside ``root``.

    A model folder supplies more than weights: config.json, tokenizer files, the generation
    config and chat templates, read by conceptvec and by transformers alike. Checking every
    entry once, before any of them is opened, confines all of them (a Hugging Face cache
    snapshot passes its repository as ``root``: its links point into ``blobs/``).
    """
    base = Path(root).resolve()
    for entry in Path(folder).iterdir():
        if entry.is_symlink():
            confined(base, os.path.relpath(entry.absolute(), base), error, what)


def lists_every_file(folder: Path, record: str, writer: Callable[[Any], bool]) -> bool:
    """Return whether ``folder`` is an earlier output of ours, safe to replace as a whole:
    its JSON ``record`` file passes ``writer`` (our mark) and its ``files`` list names every
    entry the folder holds. A file a user added since is not listed, so the folder is not
    ours to delete. One rule for every command that replaces a folder it wrote."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        rec = read_json(folder / record, ConceptvecError, "")
    except ConceptvecError:
        return False
    if not isinstance(rec, dict) or not writer(rec):
        return False
    listed = rec.get("files")
    if not isinstance(listed, list):
        return False
    return {p.name for p in folder.iterdir()} <= {*map(str, listed), record}


def check_new(path: str | Path, overwrite: bool, error: type[ConceptvecError]) -> Path:
    """Raise ``error`` unless :func:`write_new` may write ``path``: its folder exists, it is
    not a folder, and it is absent or ``overwrite``. Commands that write several outputs
    check every one of them with this before any work, so none is written and then fails."""
    path = Path(path)
    if not path.parent.is_dir():
        raise error(f"{path}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise error(f"{path}: is a folder; pass a file path")
    if path.exists() and not overwrite:
        raise error(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
    return path


NAME_BYTES = 255
"""The longest file name that common file systems take (ext4, XFS, APFS), in bytes."""


def check_name(path: str | Path, error: type[ConceptvecError], room: int = 0) -> Path:
    """Raise ``error`` unless ``path``'s last part, with ``room`` bytes more for the
    temporary names made beside it, fits in a file name (the system's own message, "File
    name too long", would come late and name no cause)."""
    path = Path(path)
    size = len(os.fsencode(path.name))
    if size + room > NAME_BYTES:
        raise error(
            f"the output name {path.name[:40]!r}... is {size} bytes long; at most "
            f"{NAME_BYTES - room} fit in a file name here: choose a shorter one"
        )
    return path


def check_writable(folder: str | Path, error: type[ConceptvecError], what: str) -> None:
    """Raise ``error`` unless a new entry can be made in ``folder``: a folder is made there
    and removed, so a read-only or full file system is reported before any work."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".conceptvec-probe-", dir=folder))
    except OSError as e:
        raise error(f"cannot write in {folder} ({e.strerror or e}); {what}") from None


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
"""The errors of a write that a user fixes: space, quota, a read-only or foreign folder."""


def write_failure(e: BaseException) -> str | None:
    """Return the reason a write failed when ``e`` is one a user fixes (a full disk, a
    read-only folder: an OSError, or safetensors' own error wrapping one), else None."""
    if isinstance(e, OSError):
        return (e.strerror or str(e)) if e.errno in WRITE_ERRORS else None
    if type(e).__name__ == "SafetensorError":  # "IoError(Os { code: 28, ..., message: "..." })"
        found = re.search(r"Os \{ code: (\d+),.*message: \"([^\"]*)\"", str(e))
        if found and int(found.group(1)) in WRITE_ERRORS:
            return found.group(2)
    return None


def short_name(text: str, limit: int = 64) -> str:
    """Return ``text`` if it has at most ``limit`` bytes (UTF-8), else its longest prefix
    that fits with ``-`` and 8 hex digits of its sha256 after it: a name made from a long
    concept name stays a valid file name, and two long names keep different ones."""
    data = text.encode()
    if len(data) <= limit:
        return text
    head = data[: limit - 9].decode("utf-8", "ignore")
    return f"{head}-{hashlib.sha256(data).hexdigest()[:8]}"


def write_new(path: str | Path, data: bytes, overwrite: bool, error: type[ConceptvecError]) -> Path:
    """Write ``data`` to ``path`` atomically: a synced temporary file, then a rename.

    Without ``overwrite`` an existing ``path`` is refused, also one that appears while
    writing (the file is linked into place, which fails if the name is taken). Raises
    ``error`` with a one-line fix.
    """
    path = check_new(path, overwrite, error)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise error(
                    f"{path}: exists; pass --overwrite (overwrite=True) to replace it"
                ) from None
            except OSError:  # a file system without hard links
                os.replace(tmp, path)
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}; choose another path") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


def swap_folder(tmp: Path, out: Path, check: Callable[[], None] | None = None) -> None:
    """Put the finished folder ``tmp`` at ``out``, replacing what is there (``check()`` runs
    first, right before replacing). If the final rename fails, the earlier ``out`` is moved
    back, so a failed write never loses it. ``tmp`` is gone afterwards either way."""
    old = None
    try:
        if check is not None:
            check()
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old, out)
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our temporary folder
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # the earlier copy, replaced


def file_mode() -> int:
    """Return the mode a plain ``open()`` would give a new file (0o666 less the umask)."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o22)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


_MODE: int | None = None


def follow_umask(folder: str | os.PathLike[str]) -> None:
    """Give ``folder`` and everything in it the modes ``mkdir`` and ``open`` would (0o755 and
    0o644 under umask 022): ``mkdtemp`` makes 0o700 folders and some writers 0o600 files.
    Links are left alone."""
    files = file_mode()
    dirs = files | (files & 0o444) >> 2  # x wherever r
    for root, _dirs, names in os.walk(folder):
        os.chmod(root, dirs)
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, files)
