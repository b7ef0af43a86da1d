"""The one output policy, for every command and Python function that writes.

- A file output that exists is replaced only with ``overwrite``, and then only when it is a
  regular file of the kind the command writes (an h5ad, a CSV, a PNG, a JSON that parses).
- A device, FIFO, socket or directory is never replaced, nor is anything a symlink points to.
- An output inside one of the command's inputs (a checkpoint, run or shard directory, or the
  input file itself) is refused.
- A directory output is written only when it is absent or empty; with ``overwrite``, only when
  every file in it (recursively) is one the command writes itself: by name, and for an h5ad, h5,
  CSV, PNG or JSON name also by content.
- The parent directory must exist or be creatable, and be writable: checked before any work.

Each refusal is one ``InputError`` line naming the path and the fix.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tfx.errors import InputError

_SIGNATURES = {"h5ad": b"\x89HDF\r\n\x1a\n", "h5": b"\x89HDF\r\n\x1a\n", "png": b"\x89PNG\r\n\x1a\n"}


@dataclass(frozen=True)
class FileOutput:
    """A file a command writes: ``kind`` is h5ad, h5, csv, png or json."""

    kind: str


@dataclass(frozen=True)
class DirOutput:
    """A directory a command writes: ``writes`` are the patterns (``fnmatch`` part by part, relative
    paths with '/'; ``DIR/**``: anything under DIR) of every file it may put there; anything else
    found in it is the user's."""

    writes: tuple[str, ...]
    what: str = "directory"


def _is_kind(path: Path, kind: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if kind == "h5ad" and head.startswith(_SIGNATURES[kind]):  # anndata's root mark, not any HDF5 file
            import h5py  # (a gene embedding .h5 is HDF5 too)

            with h5py.File(path, "r") as f:
                return f.attrs.get("encoding-type") in ("anndata", b"anndata")
        if kind in _SIGNATURES:
            return head.startswith(_SIGNATURES[kind])
        if kind == "json":
            json.loads(path.read_text())
            return True
        if kind == "csv":  # text is ambiguous: the name must say CSV, and the rows must agree
            rows = list(csv.reader(path.read_text().splitlines()[:50]))
            return path.suffix.lower() == ".csv" and bool(rows) and len({len(r) for r in rows if r}) == 1

    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def _not_its_kind(path: Path) -> bool:
    """A file named as the command's output whose content is not of the kind its name says: the
    user's own file under that name."""
    kind = path.suffix.lower().lstrip(".")
    return kind in ("h5ad", "h5", "png", "json", "csv") and not _is_kind(path, kind)


def _written(name: str, patterns: Iterable[str]) -> bool:
    """``name`` (a relative path) is one of ``patterns``, part for part: 'vocabs/*.h5' is not
    'vocabs/mine/x.h5'."""
    parts = PurePosixPath(name).parts
    for pattern in patterns:
        want = PurePosixPath(pattern).parts
        if want[-1] == "**" and parts[: len(want) - 1] == want[:-1] and len(parts) >= len(want):
            return True
        if len(parts) == len(want) and all(map(fnmatch.fnmatchcase, parts, want)):
            return True
    return False


def _kind_of(mode: int) -> str | None:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return None


def check_outside(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], label: str) -> None:
    """``path`` is none of ``inputs`` and lies in none of them (URLs aside); else one InputError line
    that starts with ``label``."""
    real = Path(os.path.realpath(path))
    for given in inputs:
        if given is None or "://" in str(given):
            continue
        src = Path(os.path.realpath(given))
        if real == src or (src.is_dir() and src in real.parents):
            raise InputError(f"{label}: lies in the input {given}, which the command reads; choose an output "
                             "outside it")


def _check_parent(path: Path, option: str) -> None:
    check_writable(Path(os.path.abspath(path)).parent, f"{option} {path}")


def check_writable(directory: str | os.PathLike, label: str) -> None:
    """``directory`` (existing, or made on the way) can be written into: its nearest existing
    ancestor is a directory this process may write (a read-only mount is not, even for root).
    Checked before any work; else one InputError line that starts with ``label``."""
    parent = Path(os.path.abspath(directory))
    while not os.path.lexists(parent):  # a dangling symlink on the way stops here: nothing can be made through it
        parent = parent.parent
    if parent.is_symlink() and not parent.exists():
        raise InputError(f"{label}: {parent} is a symbolic link to nothing; choose an output where you can write")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        raise InputError(f"{label}: {parent} is not a writable directory; choose an output where you can write")


def _can_create_in(directory: Path) -> bool:
    """The kernel's own answer (an unnamed file where the filesystem allows one): /proc and /sys show
    root every permission bit, yet nothing can be made there."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_output(path: str | os.PathLike, output: FileOutput | DirOutput, *, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike | None] = (), option: str = "--output") -> Path:
    """``path`` if the command may write ``output`` there (see the module docstring); else InputError."""
    if isinstance(output, FileOutput) and str(path).endswith(("/", os.sep)):  # Path() would drop the slash
        raise InputError(f"{option} {path}: ends with '/', so it names a directory; name the .{output.kind} file "
                         "to write")
    path = Path(path)
    check_outside(path, inputs, f"{option} {path}")
    _check_parent(path, option)
    if path.is_symlink():
        raise InputError(f"{option} {path}: is a symbolic link; name the real path to write, or another output")
    if not os.path.lexists(path):
        return path
    mode = os.stat(path).st_mode
    flag = "--overwrite" if option.startswith("--") else "overwrite=True"  # the CLI's words, or the API's
    if isinstance(output, FileOutput):
        special = _kind_of(mode)
        if special is not None:
            raise InputError(f"{option} {path}: is {special}, which tfx never replaces; name a new .{output.kind} file")
        if not overwrite:
            raise InputError(f"{option} {path}: exists; pass {flag} to replace it, or choose another {option}")
        if not _is_kind(path, output.kind):
            raise InputError(f"{option} {path}: exists and is not a {output.kind} file, so {flag} does not "
                             "replace it; choose another output")
        if not os.access(path, os.W_OK):
            raise InputError(f"{option} {path}: is not writable; choose another output")
        return path
    if not stat.S_ISDIR(mode):
        raise InputError(f"{option} {path}: exists and is not a directory; choose another {option}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: is not a writable directory; choose another output")
    found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir() or p.is_symlink())
    if not found and not any(path.iterdir()):
        return path
    if not overwrite:
        raise InputError(f"{option} {path}: is not empty; pass {flag} to replace the {output.what} there, "
                         f"or choose an empty or new {option}")
    foreign = [f for f in found if not _written(f, output.writes) or (path / f).is_symlink()
               or _kind_of(os.lstat(path / f).st_mode) or _not_its_kind(path / f)]
    foreign += [d for d in (str(p.relative_to(path)) for p in path.rglob("*") if p.is_dir() and not p.is_symlink())
                if not any(w.startswith(d + "/") for w in output.writes) and not _written(d, output.writes)]
    if foreign:
        raise InputError(f"{option} {path}: holds {foreign[0]}, which the command does not write; nothing there is "
                         f"replaced, choose another {option}")
    return path
