"""Write files and directories under a temporary name, then rename: never half-written."""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import glob
import io
import os
import shutil
import warnings
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
def h5_file(path: str | os.PathLike):
    """``h5py.File(path, "w")``, built in memory and then written by Python, so that a full disk is
    one OSError: HDF5 writing into a full disk by itself crashes the process (a segmentation fault
    as it closes the file). For files that fit in memory (use ``atomic_path`` around it)."""
    import h5py

    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        yield f
    Path(path).write_bytes(image.getbuffer())


_UNCLOSED = []  # HDF5 files a failed write left unclosable, kept open until the process ends


@contextmanager
def h5_stream(path: str | os.PathLike):
    """``h5py.File(path, "w")`` for an output written as it is computed (too large for ``h5_file``).
    HDF5 crashes the process closing a file it could not flush (a full disk), so such a file is never
    closed, and the `tfx` command exits without closing it (``tfx.cli.entry``). h5py reports a failed
    flush as a RuntimeError: it is raised as the OSError it was."""
    import h5py

    f = h5py.File(path, "w")
    try:
        yield f
        f.flush()
    except BaseException as err:
        try:
            f.flush()
        except RuntimeError as broken:
            _UNCLOSED.append(f)
            if isinstance(err, RuntimeError) and any("errno = 28," in str(e) for e in (err, broken)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path)) from None
            raise err from None
        f.close()
        raise
    f.close()


def write_h5ad(adata, path: str | os.PathLike) -> None:
    """``adata`` written atomically to ``path`` as an h5ad (strings stored as categoricals, as
    anndata does), through ``h5_file``."""
    from anndata.io import write_elem

    with warnings.catch_warnings(), atomic_path(path) as tmp, h5_file(tmp) as f:
        warnings.simplefilter("ignore")  # anndata's notes on strings stored as categoricals
        adata.strings_to_categoricals()
        write_elem(f, "/", adata)
        if adata.raw is None and "raw" in f:  # an empty group, which readers would take for a .raw
            del f["raw"]


class _Writer:
    """A file as torch.save writes it, keeping the OSError that stopped a write."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def save_tensors(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, where a full disk raises its OSError (No space left on device):
    torch's own writer reports any failed write as a RuntimeError without the errno."""
    import torch

    with open(path, "wb") as f:
        writer = _Writer(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, ignore: tuple[str, ...] = ()) -> None:
    """``shutil.copytree(src, dst)`` (links followed, names matching ``ignore`` skipped at any depth),
    where the first failure raises as it is: shutil gathers failures into one shutil.Error, which
    loses a full disk's errno."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    for entry in sorted(Path(src).iterdir()):
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in ignore):
            continue
        if entry.is_dir():
            copy_tree(entry, Path(dst) / entry.name, ignore)
        else:
            shutil.copy2(entry, Path(dst) / entry.name)


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
