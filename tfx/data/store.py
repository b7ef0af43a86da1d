"""Shards on local disk or object storage, through one small interface.

A location is a local directory or an fsspec URL (``s3://bucket/prefix``, ``gs://``, ``az://``,
``https://``, ...; ``s3fs`` for S3, the ``tfx[s3]`` extra). S3 takes the standard AWS environment:
``AWS_ENDPOINT_URL`` (an S3-compatible server), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
or ``AWS_PROFILE``, and botocore's retry policy (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``). No shell
command is run. A failure of the store is one ``InputError`` naming the URL and the fix.

Writing is whole files only: a file is written under a temporary local name and then renamed (local)
or uploaded in one request (an object store makes an object visible whole, or not at all).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from tfx.atomic import atomic_path
from tfx.errors import InputError

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(spec) -> bool:
    """An fsspec URL other than a local ``file://`` one (``pipe:`` is webdataset's, not a URL)."""
    return isinstance(spec, str) and bool(URL.match(spec)) and not spec.startswith("file://")


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _filesystem(url: str):
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the core install
        raise InputError(f"{url}: reading URLs needs fsspec; pip install 'tfx[s3]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        scheme = url.split("://", 1)[0]
        hint = "pip install 'tfx[s3]'" if scheme in ("s3", "s3a") else f"install fsspec's package for {scheme}://"
        raise InputError(f"{url}: no filesystem for {scheme}:// ({err}); {hint}") from None


def store_error(url: str, err: BaseException) -> InputError:
    """One line for a store failure: credentials, permission, an unreachable endpoint, a missing object."""
    names = {type(e).__name__ for e in _chain(err)}
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return InputError(f"{url}: no credentials for the object store; set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "ClientConnectorError",
                "ConnectionRefusedError", "ReadTimeoutError"}:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "the default endpoint"
        return InputError(f"{url}: cannot reach the object store at {endpoint} after retrying ({text}); "
                          "check AWS_ENDPOINT_URL and the network")
    if isinstance(err, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return InputError(f"{url}: access denied by the object store ({text}); check the credentials and "
                          "the bucket's permissions")
    if isinstance(err, FileNotFoundError):
        return InputError(f"{url}: no such object or bucket")
    return InputError(f"{url}: the object store failed ({type(err).__name__}: {text})")


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


@contextlib.contextmanager
def _store_errors(url: str):
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        raise store_error(url, err) from err


def open_url(url: str, mode: str = "rb"):
    """A file-like object reading ``url`` (opened now, so a failure is raised here)."""
    fs, path = _filesystem(url)
    with _store_errors(url):
        return fs.open(path, mode)


def read_bytes(url: str) -> bytes:
    fs, path = _filesystem(url)
    with _store_errors(url):
        return fs.cat_file(path)


def kind(url: str) -> str | None:
    """'file', 'dir' or None (absent)."""
    fs, path = _filesystem(url)
    with _store_errors(url):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
    return "dir" if info.get("type") == "directory" else "file"


def glob_urls(url: str, pattern: str) -> list[str]:
    fs, path = _filesystem(url)
    with _store_errors(url):
        found = fs.glob(path.rstrip("/") + "/" + pattern)
    return sorted(fs.unstrip_protocol(p) for p in found)


class Location:
    """A directory to write whole files into: local (``Path``) or an object-store prefix."""

    def __init__(self, where: str | os.PathLike):
        self.url = os.fspath(where)
        self.remote = is_url(self.url)
        if self.remote:
            self.root = _filesystem(self.url)[1].rstrip("/")
        else:
            self.path = Path(self.url.removeprefix("file://"))

    def __str__(self) -> str:
        return self.url

    @property
    def fs(self):
        """The filesystem, made in the process that uses it (fsspec's async ones are not fork-safe)."""
        return _filesystem(self.url)[0]

    def child(self, name: str) -> str:
        return join(self.url, name) if self.remote else str(self.path / name)

    def exists(self, name: str = "") -> bool:
        if not self.remote:
            return (self.path / name).exists() if name else self.path.exists()
        with _store_errors(self.child(name) if name else self.url):
            return self.fs.exists(self._key(name))

    def read_text(self, name: str) -> str:
        if not self.remote:
            return (self.path / name).read_text()
        with _store_errors(self.child(name)):
            return self.fs.cat_file(self._key(name)).decode()

    def is_empty(self) -> bool:
        """Absent, or an empty directory (a file at the location is not empty)."""
        if not self.remote:
            return not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))
        with _store_errors(self.url):
            if self.fs.isfile(self.root):
                return False
            try:
                return not self.fs.ls(self.root, detail=False, refresh=True)
            except FileNotFoundError:
                return True

    def is_dir_or_absent(self) -> bool:
        if not self.remote:
            return not self.path.exists() or self.path.is_dir()
        with _store_errors(self.url):
            return not self.fs.isfile(self.root)

    @contextlib.contextmanager
    def writing(self, name: str):
        """Yield a local temporary path; on success it becomes ``name`` whole (renamed, or uploaded)."""
        if not self.remote:
            with atomic_path(self.path / name) as tmp:
                yield tmp
            return
        folder = tempfile.mkdtemp(prefix=".tfx-upload-")
        try:
            tmp = Path(folder) / Path(name).name
            yield tmp
            with _store_errors(self.child(name)):
                self.fs.put_file(str(tmp), self._key(name))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def write_text(self, name: str, text: str) -> None:
        with self.writing(name) as tmp:
            tmp.write_text(text)

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root
