"""Write files and directories under a temporary name, then rename: never half-written."""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from tfx.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling of ``path``; on success it replaces ``path``, on error it is removed.

    Callers decide whether ``path`` may be replaced (see ``tfx.checkpoint.check_output_dir``).
    Temporaries of a killed run (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>`` of a pid no longer
    running) are removed first."""
    path = Path(os.path.abspath(path))  # '.' and 'dir/..' have a name to put a sibling beside
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def exclusive(directory: str | os.PathLike, what: str):
    """Hold ``directory``'s lock (``.tfx.lock`` in it) while the block runs: a second run writing the
    same ``what`` is refused at once instead of colliding. The lock dies with the process."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".tfx.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{directory}: another tfx run is writing this {what}; wait for it to end, "
                             "or choose another output") from None
        yield


def remove_stale(path: Path) -> None:
    """Remove the temporaries that a killed process left beside ``path``; a process killed between
    its two renames left the previous ``path`` as ``.old``: it is put back."""
    name = glob.escape(path.name)
    for leftover in [*path.parent.glob(f".{name}.old-*"), *path.parent.glob(f".{name}.tmp-*")]:
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            if leftover.name.startswith(f".{path.name}.old-") and not path.exists():
                os.replace(leftover, path)
            else:
                _remove(leftover)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
