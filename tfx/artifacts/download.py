"""`tfx download`: the official release archives, fetched resumably and unpacked safely.

``BASE_URL/<archive>.tar.gz`` holds one top directory ``<archive>/``; it becomes
``CHECKPOINT_DIR/<archive>/``, the layout `tfx infer` and the recipes read. The archive is written
to ``CHECKPOINT_DIR/.tfx-download/`` and a later run continues it with an HTTP range request; its
size (and ``BASE_URL/<archive>.tar.gz.sha256``, when the server has one) is checked; it is unpacked,
member by member checked, into a temporary directory beside the target, then renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath


from tfx.atomic import atomic_path
from tfx.outputs import check_writable
from tfx.progress import progress

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://czi-transcriptformer.s3.amazonaws.com/weights"
MODELS = ("tf_sapiens", "tf_exemplar", "tf_metazoa")
ARCHIVES = {
    "tf-sapiens": ("tf_sapiens",),
    "tf-exemplar": ("tf_exemplar",),
    "tf-metazoa": ("tf_metazoa",),
    "all-embeddings": ("all_embeddings",),
    "all": (*MODELS, "all_embeddings"),
}
WORK_DIR = ".tfx-download"
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "tfx-download"


class DownloadError(ValueError):
    """A download or unpack that failed; the message says what to do next."""


class DownloadInterrupted(DownloadError):
    """The transfer stopped after its retries; the partial file is kept for the next run to resume."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would land outside the target, or a device."""


def download_artifacts(name: str, checkpoint_dir: str | os.PathLike, *, base_url: str | None = None,
                       retries: int = 3, retry_wait: float = 2.0) -> list[dict]:
    """Fetch and unpack the archives ``name`` stands for from ``base_url`` (default: the reference's
    bucket); skip those already present.

    Returns one record per archive: name, path, status ("present" or "downloaded"), url, bytes, sha256
    (the published checksum that was checked, or None).
    """
    if name not in ARCHIVES:
        raise DownloadError(f"unknown artifact {name!r}; choose one of {', '.join(ARCHIVES)}")
    checkpoint_dir = Path(checkpoint_dir)
    base_url = base_url or DEFAULT_BASE_URL
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file"):
        raise DownloadError(f"--base-url {base_url}: not an http://, https:// or file:// URL; name the mirror's URL")
    return [fetch_archive(archive, checkpoint_dir, base_url, retries, retry_wait) for archive in ARCHIVES[name]]


def layout_problem(archive: str, path: Path) -> str | None:
    """What keeps ``path`` from being an unpacked ``archive``, or None."""
    if not path.is_dir():
        return "missing"
    if archive == "all_embeddings":
        return None if any(path.glob("*_gene.h5")) else "holds no <species>_gene.h5 file"
    missing = [f for f in ("config.json", "model_weights.pt", "vocabs") if not (path / f).exists()]
    return f"lacks {', '.join(missing)}" if missing else None


def fetch_archive(archive: str, checkpoint_dir: Path, base_url: str, retries: int = 3,
                  retry_wait: float = 2.0) -> dict:
    target = checkpoint_dir / archive
    url = f"{base_url.rstrip('/')}/{archive}.tar.gz"
    record = {"name": archive, "path": str(target), "url": url, "bytes": 0, "sha256": None}
    problem = layout_problem(archive, target)
    if problem is None:
        return {**record, "status": "present"}
    if target.exists() and (not target.is_dir() or any(target.iterdir())):  # tfx's unpacking is all or nothing
        raise DownloadError(f"{target}: exists and is not a complete {archive} release ({problem}); tfx does not "
                            "replace what it did not write: move it away, then run the same command again")

    check_writable(checkpoint_dir, f"--checkpoint-dir {checkpoint_dir}")  # a read-only place: refused, not a failed disk
    work = checkpoint_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    part = work / f"{archive}.tar.gz.part"
    try:
        with open(part, "ab") as out:
            try:  # the lock lives as long as the handle: two runs never write one file
                fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DownloadError(f"{part}: another tfx download is writing it; "
                                    "wait for that one to finish") from None
            try:
                size = _fetch(url, out, part, retries, retry_wait)
                sha256 = _published_sha256(url)
                if sha256 and _sha256(part) != sha256:
                    raise DownloadError(f"{url}: checksum mismatch (expected sha256 {sha256}); "
                                        "the download was deleted, run the same command again")
                _unpack(part, archive, checkpoint_dir, url)
            except DownloadInterrupted:
                raise  # keep the partial file: the next run resumes it
            except DownloadError:
                part.unlink(missing_ok=True)  # never resume onto bytes known to be bad
                raise
            part.unlink()
    finally:
        with contextlib.suppress(OSError):
            work.rmdir()  # only once empty: no other archive in progress
    return {**record, "status": "downloaded", "bytes": size, "sha256": sha256}


def _fetch(url: str, out, part: Path, retries: int, retry_wait: float) -> int:
    """Download ``url`` into the open file ``out`` (at ``part``), resuming what it holds; return the size."""
    failures = 0
    while True:
        have = part.stat().st_size
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        total = None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                total = _total_size(response, have, url)
                if response.status == 200 and have:  # the server ignored the range: start over
                    log.info("%s: the server does not resume downloads; starting over", url)
                    out.truncate(0)
                    have = 0
                elif have:
                    log.info("%s: resuming at %d of %d bytes", url, have, total)
                _copy(response, out, total, have, url.rsplit("/", 1)[-1])
            got = part.stat().st_size
            if total is None or got == total:
                return got
            if got > total:
                raise DownloadError(f"{url}: received {got} bytes, more than the {total} announced; "
                                    "the partial file was deleted, run the same command again")
            reason = "the connection closed early"
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing after what we hold: it is complete, or from another file
                if _total_from_content_range(err.headers.get("Content-Range")) == have:
                    return have
                out.truncate(0)
                reason = "the partial file did not match the server's; starting over"
            elif err.code in (404, 403):
                raise DownloadError(f"{url}: not found (HTTP {err.code}); check the name and --base-url") from None
            elif err.code < 500 and err.code != 429:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            else:
                reason = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, HTTPException, OSError) as err:  # refused, reset, timed out
            reason = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        failures += 1
        got = part.stat().st_size
        if failures > retries:
            of = f" of {total}" if total else ""
            raise DownloadInterrupted(f"{url}: interrupted at {got}{of} bytes ({reason}); "
                                      "run the same command again to resume")
        log.warning("%s: %s; retrying (%d of %d)", url, reason, failures, retries)
        time.sleep(retry_wait * 2 ** (failures - 1))


def _total_size(response, have: int, url: str) -> int | None:
    """The whole file's size from a 200 or 206 response (None when the server does not say)."""
    if response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != have:
            raise DownloadError(f"{url}: the server answered a range request with "
                                f"{response.headers.get('Content-Range')!r}, not bytes {have}-")
        return int(match[2])
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", value or "")
    return int(match[1]) if match else None


def _copy(response, out, total: int | None, have: int, label: str) -> None:
    with progress(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as bar:
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        finally:  # the file's size on disk is where the next range request starts
            out.flush()


def _published_sha256(url: str) -> str | None:
    """The checksum the server publishes beside the archive (sha256sum format), if any."""
    request = urllib.request.Request(url + ".sha256", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            text = response.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, HTTPException, OSError):
        log.info("%s: no checksum published; verifying the size only", url)
        return None
    digest = text.split()[0].lower() if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        log.warning("%s.sha256: not a sha256 checksum; verifying the size only", url)
        return None
    return digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_member(member: tarfile.TarInfo, top: str) -> None:
    """Refuse a member that would be written outside the extraction directory, or a device; a link
    inside the archive's directory ``top`` (what is kept) must point inside it too."""
    name = member.name
    if PurePosixPath(name).is_absolute():
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"member {name!r} climbs out with '..'")
    if member.isdev():
        raise UnsafeArchiveError(f"member {name!r} is a device or pipe")
    if member.issym() or member.islnk():
        # a symlink's target is relative to its directory, a hard link's to the archive root
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        target = PurePosixPath(os.path.normpath(base / member.linkname))
        kept = PurePosixPath(name).parts[:1] == (top,)
        if target.is_absolute() or target.parts[:1] == ("..",) or (kept and target.parts[:1] != (top,)):
            raise UnsafeArchiveError(f"member {name!r} links outside the archive (to {member.linkname!r})")


def _unpack(path: Path, archive: str, checkpoint_dir: Path, url: str) -> None:
    """Unpack into a temporary directory beside the target, check it, then rename it into place."""
    for stale in checkpoint_dir.glob(f".{archive}.unpack-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive}.unpack-", dir=checkpoint_dir))
    refused = "nothing was kept (the archive is corrupt or malicious; check --base-url)"
    try:
        try:
            # one streaming pass; GzipFile (not tarfile's own stream) checks the CRC at the end
            with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, \
                    tarfile.open(fileobj=gz, mode="r|") as tar, \
                    progress(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=f"unpack {archive}") as bar:
                for member in tar:
                    check_member(member, archive)
                    # the data filter also catches escapes through links made by earlier members
                    tar.extract(member, staging, filter="data")
                    bar.update(raw.tell() - bar.n)
                while gz.read(CHUNK):  # past the end-of-archive blocks, to the gzip trailer
                    pass
        except UnsafeArchiveError as err:
            raise UnsafeArchiveError(f"{url}: refused, {err}; {refused}") from None
        except tarfile.FilterError as err:
            raise UnsafeArchiveError(f"{url}: refused, member {err.tarinfo.name!r}: {err}; {refused}") from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise DownloadError(f"{url}: not a valid tar.gz archive ({err}); "
                                "it was deleted, run the same command again to download it afresh") from None
        problem = layout_problem(archive, staging / archive)
        if problem:
            raise DownloadError(f"{url}: the archive's {archive}/ {problem}; "
                                "it is not the official release layout (check --base-url)")
        with atomic_path(checkpoint_dir / archive) as tmp:
            os.replace(staging / archive, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
