"""`tfx download` against a real HTTP mirror on 127.0.0.1 serving real release archives, and
`tfx download-data` around a local stand-in for the CELLxGENE portal (unreachable from here)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import struct
import sys
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tfx.artifacts import (
    CensusPortal,
    Dataset,
    DownloadError,
    DownloadInterrupted,
    PortalError,
    UnsafeArchiveError,
    download_artifacts,
    download_data,
)
from tfx.artifacts.download import MODELS, WORK_DIR
from tfx.checkpoint import load_checkpoint
from tfx.data.shards import read_shard


# ---- a mirror: http.server with range requests, and connections it can drop midway ----------------

class Mirror:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cuts: dict[str, list[int]] = {}  # path -> byte offsets where successive responses stop
        self.ranges = True  # False: ignore Range headers, as some servers do
        self.reset = False  # True: a cut connection is reset rather than closed
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}/weights"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def publish(self, name: str, data: bytes, sha256: str | None = None) -> None:
        self.files[f"/weights/{name}.tar.gz"] = data
        if sha256:
            self.files[f"/weights/{name}.tar.gz.sha256"] = f"{sha256}  {name}.tar.gz\n".encode()

    def archive_requests(self, name: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == f"/weights/{name}.tar.gz"]


def _handler(mirror: Mirror):
    class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: the connection closes after each response
        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            mirror.requests.append((self.path, rng))
            data = mirror.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and mirror.ranges else 0
            if start >= len(data) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cuts = mirror.cuts.get(self.path)
            stop = cuts.pop(0) if cuts else len(data)  # a cut: part of the body, then the connection drops
            self.wfile.write(data[start:stop])
            if stop < len(data) and mirror.reset:  # closing now with linger 0 sends a TCP reset, not a FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())

    return Handler


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.server.shutdown()
    m.server.server_close()


# ---- release archives in the official layout, built from a real checkpoint ---------------------------

def tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tree_entries(root: Path, arcname: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    entries = []
    for path in [root, *sorted(root.rglob("*"))]:
        rel = path.relative_to(root).as_posix()
        info = tarfile.TarInfo(arcname if rel == "." else f"{arcname}/{rel}")
        if path.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            entries.append((info, None))
        else:
            entries.append((info, path.read_bytes()))
    return entries


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """Archive bytes per name (a tiny real checkpoint under each model name, species gene files)
    and the tree each unpacks to."""
    from conftest import tiny_model
    from tfx.checkpoint import Checkpoint, save_checkpoint
    from tfx.model.config import DataConfig
    from tfx.vocab import GeneVocab, write_gene_embeddings

    tmp = tmp_path_factory.mktemp("release")
    rng = np.random.default_rng(0)
    embeddings = tmp / "all_embeddings"
    embeddings.mkdir()
    for species in ("homo_sapiens", "mus_musculus"):
        genes = [f"ENS{species[:3].upper()}{i:011d}" for i in range(20)]
        write_gene_embeddings(embeddings / f"{species}_gene.h5", genes, rng.normal(size=(20, 12)).astype(np.float32))
    data_cfg = DataConfig(esm2_mappings=["homo_sapiens_gene.h5"])
    vocab, _ = GeneVocab.from_files(data_cfg.special_tokens, [embeddings / "homo_sapiens_gene.h5"])
    model = tiny_model(vocab_size=len(vocab))
    ckpt = Checkpoint(model, vocab, {"assay": {"unknown": 0, "a": 1, "b": 2}}, model.cfg, data_cfg)
    save_checkpoint(ckpt, tmp / "checkpoint")
    trees = {name: tmp / "checkpoint" for name in MODELS} | {"all_embeddings": embeddings}
    return {"trees": trees, "archives": {name: tar_gz(tree_entries(root, name)) for name, root in trees.items()}}


def publish_all(mirror: Mirror, release: dict, checksums: bool = True) -> None:
    for name, data in release["archives"].items():
        mirror.publish(name, data, hashlib.sha256(data).hexdigest() if checksums else None)


def same_tree(a: Path, b: Path) -> bool:
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    return files(a) == files(b)


def assert_clean(checkpoint_dir: Path) -> None:
    """No partial download, lock or unpack directory left behind."""
    assert not (checkpoint_dir / WORK_DIR).exists()
    assert not list(checkpoint_dir.glob(".*unpack-*")) and not list(checkpoint_dir.glob(".*tmp-*"))


# ---- tfx download ------------------------------------------------------------------------------------

def test_download_unpacks_the_official_layout_and_a_second_run_does_nothing(mirror, release, tmp_path):
    publish_all(mirror, release)
    ckpts = tmp_path / "checkpoints"
    [record] = download_artifacts("tf-sapiens", ckpts, base_url=mirror.url)
    assert record["status"] == "downloaded"
    assert record["sha256"] == hashlib.sha256(release["archives"]["tf_sapiens"]).hexdigest()
    assert record["bytes"] == len(release["archives"]["tf_sapiens"])
    assert same_tree(ckpts / "tf_sapiens", release["trees"]["tf_sapiens"])
    ckpt = load_checkpoint(ckpts / "tf_sapiens")  # what `tfx infer --checkpoint` loads
    assert ckpt.data_cfg.esm2_mappings == ["homo_sapiens_gene.h5"]
    assert_clean(ckpts)

    seen = len(mirror.requests)
    [again] = download_artifacts("tf-sapiens", ckpts, base_url=mirror.url)
    assert again["status"] == "present" and len(mirror.requests) == seen  # not even a request


def test_a_checkpoint_dir_that_cannot_be_written_or_a_base_url_that_is_no_url_is_one_line(tmp_path, capsys):
    """Refused before any request, exit 2 (was a NotADirectoryError / ValueError traceback); a
    read-only mount is refused the same way (not testable as root with chmod)."""
    from tfx.cli import main

    (tmp_path / "afile").write_text("mine")
    for extra, message in [(["--checkpoint-dir", tmp_path / "afile" / "ckpts"],
                            f"--checkpoint-dir {tmp_path / 'afile' / 'ckpts'}: {tmp_path / 'afile'} is not a "
                            "writable directory"),
                           (["--checkpoint-dir", tmp_path / "c", "--base-url", "not a url"],
                            "--base-url not a url: not an http://, https:// or file:// URL")]:
        assert main(["download", "tf-sapiens", *map(str, extra)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "c").exists()


def test_all_fetches_every_model_and_the_embeddings(mirror, release, tmp_path):
    publish_all(mirror, release, checksums=False)  # no checksum published: the size is still verified
    records = download_artifacts("all", tmp_path, base_url=mirror.url, retry_wait=0)
    assert [(r["name"], r["status"], r["sha256"]) for r in records] == [
        (n, "downloaded", None) for n in (*MODELS, "all_embeddings")]
    for name, tree in release["trees"].items():
        assert same_tree(tmp_path / name, tree)
    assert {r["status"] for r in download_artifacts("all", tmp_path, base_url=mirror.url)} == {"present"}
    assert_clean(tmp_path)


def drop_connection(mirror, release, name: str, after: float) -> tuple[bytes, int]:
    """Publish the release; the mirror drops the connection once ``after`` of NAME's archive is sent."""
    publish_all(mirror, release)
    data = release["archives"][name]
    cut = int(len(data) * after)
    mirror.cuts[f"/weights/{name}.tar.gz"] = [cut]
    return data, cut


@pytest.mark.parametrize("reset", [False, True])
def test_a_dropped_connection_is_resumed_with_a_range_request(mirror, release, tmp_path, reset):
    data, cut = drop_connection(mirror, release, "tf_exemplar", after=1 / 3)
    mirror.reset = reset
    download_artifacts("tf-exemplar", tmp_path, base_url=mirror.url, retry_wait=0)
    first, second = mirror.archive_requests("tf_exemplar")
    assert first is None
    if not reset:  # a reset may also discard bytes already received: the range starts where the file ends
        assert second == f"bytes={cut}-"
    assert same_tree(tmp_path / "tf_exemplar", release["trees"]["tf_exemplar"])
    assert_clean(tmp_path)


@pytest.mark.parametrize("server_resumes", [True, False])
def test_an_interrupted_run_is_resumed_by_the_next(mirror, release, tmp_path, server_resumes):
    data, cut = drop_connection(mirror, release, "tf_metazoa", after=1 / 2)
    with pytest.raises(DownloadInterrupted, match=rf"interrupted at {cut} of {len(data)} bytes.*run the same command again"):
        download_artifacts("tf-metazoa", tmp_path, base_url=mirror.url, retries=0)
    part = tmp_path / WORK_DIR / "tf_metazoa.tar.gz.part"
    assert part.read_bytes() == data[:cut] and not (tmp_path / "tf_metazoa").exists()

    mirror.ranges = server_resumes  # a server that ignores ranges sends it all again: start over
    [record] = download_artifacts("tf-metazoa", tmp_path, base_url=mirror.url)
    assert record["status"] == "downloaded"
    assert mirror.archive_requests("tf_metazoa") == [None, f"bytes={cut}-"]
    assert same_tree(tmp_path / "tf_metazoa", release["trees"]["tf_metazoa"])
    assert_clean(tmp_path)


def test_a_complete_partial_file_is_unpacked_without_downloading_again(mirror, release, tmp_path):
    """A run killed between the download and the unpack."""
    publish_all(mirror, release)
    data = release["archives"]["tf_sapiens"]
    (tmp_path / WORK_DIR).mkdir()
    (tmp_path / WORK_DIR / "tf_sapiens.tar.gz.part").write_bytes(data)
    download_artifacts("tf-sapiens", tmp_path, base_url=mirror.url)
    assert mirror.archive_requests("tf_sapiens") == [f"bytes={len(data)}-"]  # answered 416: nothing more
    assert same_tree(tmp_path / "tf_sapiens", release["trees"]["tf_sapiens"])


def _damaged_tail(data: bytes) -> bytes:
    """Every member intact, the gzip CRC wrong: only reading to the trailer finds it."""
    return data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:]


def _without_weights(release: dict) -> bytes:
    entries = tree_entries(release["trees"]["tf_sapiens"], "tf_sapiens")
    return tar_gz([(i, d) for i, d in entries if not i.name.endswith("model_weights.pt")])


@pytest.mark.parametrize("damage, message", [
    ("not_gzip", "not a valid tar.gz archive"),
    ("truncated", "not a valid tar.gz archive"),
    ("damaged_tail", "not a valid tar.gz archive"),
    ("checksum", "checksum mismatch"),
    ("layout", "lacks model_weights.pt; it is not the official release layout"),
])
def test_a_corrupt_archive_is_refused_and_deleted(mirror, release, tmp_path, damage, message):
    good = release["archives"]["tf_sapiens"]
    bad = {"not_gzip": lambda: b"<html>Access Denied</html>" * 100,
           "truncated": lambda: good[: len(good) // 2],
           "damaged_tail": lambda: _damaged_tail(good),
           "checksum": lambda: good,
           "layout": lambda: _without_weights(release)}[damage]()
    published = hashlib.sha256(b"another file" if damage == "checksum" else bad).hexdigest()
    mirror.publish("tf_sapiens", bad, published)
    with pytest.raises(DownloadError, match=message):
        download_artifacts("tf-sapiens", tmp_path, base_url=mirror.url)
    assert not (tmp_path / "tf_sapiens").exists()
    assert_clean(tmp_path)  # the bad bytes are gone: a re-run downloads afresh

    mirror.publish("tf_sapiens", good, hashlib.sha256(good).hexdigest())
    download_artifacts("tf-sapiens", tmp_path, base_url=mirror.url)
    assert mirror.archive_requests("tf_sapiens") == [None, None]
    assert same_tree(tmp_path / "tf_sapiens", release["trees"]["tf_sapiens"])


MALICIOUS = {  # members (name, type, link target) added to a valid archive, and the refusal's reason
    "absolute": ([("{tmp}/evil.txt", tarfile.REGTYPE, "")], "absolute path"),
    "dotdot": ([("tf_sapiens/../../evil.txt", tarfile.REGTYPE, "")], "climbs out with '..'"),
    "symlink_absolute": ([("tf_sapiens/link", tarfile.SYMTYPE, "/etc/passwd")], "links outside"),
    "symlink_up": ([("tf_sapiens/link", tarfile.SYMTYPE, "../../evil.txt")], "links outside"),
    "symlink_to_parent": ([("tf_sapiens/up", tarfile.SYMTYPE, "..")], "links outside"),
    "hardlink_beside": ([("tf_sapiens/hard", tarfile.LNKTYPE, "other/file")], "links outside"),
    "hardlink": ([("tf_sapiens/hard", tarfile.LNKTYPE, "/etc/passwd")], "links outside"),
    "device": ([("tf_sapiens/dev", tarfile.CHRTYPE, "")], "device"),
    "fifo": ([("tf_sapiens/pipe", tarfile.FIFOTYPE, "")], "device or pipe"),
    # each link looks inside on its own; together they lead out (caught by the tarfile data filter)
    "link_chain": ([("x", tarfile.SYMTYPE, "."), ("x/y", tarfile.SYMTYPE, ".."), ("y/evil.txt", tarfile.REGTYPE, "")],
                   "'x/y'"),
}


@pytest.mark.parametrize("case", MALICIOUS)
def test_a_malicious_archive_is_refused(mirror, release, tmp_path, case):
    specs, reason = MALICIOUS[case]
    entries = tree_entries(release["trees"]["tf_sapiens"], "tf_sapiens")
    for name, kind, link in specs:
        info = tarfile.TarInfo(name.format(tmp=tmp_path))
        info.type, info.linkname = kind, link
        entries.append((info, b"pwned" if kind == tarfile.REGTYPE else None))
    mirror.publish("tf_sapiens", tar_gz(entries))
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(UnsafeArchiveError, match=rf"refused.*{re.escape(reason)}.*nothing was kept"):
        download_artifacts("tf-sapiens", ckpts, base_url=mirror.url)
    assert not list(tmp_path.rglob("evil.txt")) and not (ckpts / "tf_sapiens").exists()
    assert_clean(ckpts)


def test_a_missing_archive_names_the_mirror(mirror, tmp_path):
    with pytest.raises(DownloadError, match=r"tf_sapiens.tar.gz: not found \(HTTP 404\); check the name and --base-url"):
        download_artifacts("tf-sapiens", tmp_path, base_url=mirror.url)
    assert_clean(tmp_path)
    with pytest.raises(DownloadError, match="unknown artifact 'tf-other'; choose one of tf-sapiens"):
        download_artifacts("tf-other", tmp_path, base_url=mirror.url)


# ---- tfx download-data, around a stand-in for the portal --------------------------------------------

GENES = [f"ENSG{i:011d}" for i in range(30)]


class StandInPortal:
    """Implements PortalClient locally: lists the datasets it holds, writes real h5ad files, and
    fails the first ``failures[id]`` downloads of a dataset (a reset connection after a partial
    write, or an error page saved as the file, in turn)."""

    def __init__(self, datasets: list[Dataset], failures: dict[str, int] | None = None):
        self.datasets = datasets
        self.failures = failures or {}
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def list_datasets(self, species):
        return [d for d in self.datasets if set(d.organisms) & set(species)]

    def download(self, dataset_id, path):
        with self.lock:
            self.calls[dataset_id] += 1
            attempt = self.calls[dataset_id]
        if attempt <= self.failures.get(dataset_id, 0):
            if attempt % 2:
                path.write_bytes(b"\x89HDF\r\n")  # half a file
                raise ConnectionResetError("connection reset by peer")
            path.write_bytes(b"<html>503 Service Unavailable</html>")
            return
        write_cellxgene_h5ad(path, dataset_id, self.counts(dataset_id))

    @staticmethod
    def counts(dataset_id: str) -> np.ndarray:
        n_cells = 5 + len(dataset_id)
        return np.random.default_rng(n_cells).poisson(1.0, size=(n_cells, len(GENES))).astype(np.float32)


def write_cellxgene_h5ad(path: Path, dataset_id: str, counts: np.ndarray) -> None:
    """As the portal serves them: Ensembl ids in the var index, normalised X, raw counts in raw.X."""
    var = pd.DataFrame({"feature_name": [f"GENE{i}" for i in range(len(GENES))]}, index=GENES)
    obs = pd.DataFrame({"cell_type": "T cell", "assay": "10x 3' v3"},
                       index=[f"{dataset_id}-{i}" for i in range(len(counts))])
    raw = anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata = anndata.AnnData(X=sp.csr_matrix(np.log1p(counts)), obs=obs, var=var)
    adata.raw = raw
    adata.write_h5ad(path)


def portal_datasets() -> list[Dataset]:
    human, mouse = ("homo_sapiens",), ("mus_musculus",)
    return [
        Dataset("h-lung", human, True, {"title": "human lung"}),
        Dataset("h-blood", human, True, {"title": "human blood"}),
        Dataset("h-copy", human, False, {"title": "cells repeated from h-lung"}),
        Dataset("hm-mixed", ("homo_sapiens", "mus_musculus"), True, {"title": "xenograft"}),
        Dataset("m-brain", mouse, True, {"title": "mouse brain"}),
        Dataset("d-fin", ("danio_rerio",), True, {"title": "zebrafish fin"}),
    ]


def test_download_data_selects_primary_single_species_datasets(tmp_path):
    portal = StandInPortal(portal_datasets())
    summary = download_data(portal, ["Homo sapiens,mus musculus"], tmp_path, processes=2, retry_wait=0)
    assert (summary["selected"], summary["downloaded"], summary["present"]) == (3, 3, 0)
    for dataset_id in ("h-lung", "h-blood", "m-brain"):
        assert (tmp_path / dataset_id / "__success__").read_text() == "success"
        adata = anndata.read_h5ad(tmp_path / dataset_id / "full.h5ad")
        assert adata.n_obs == len(portal.counts(dataset_id))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_metadata.json", "h-blood", "h-lung", "m-brain"]
    metadata = json.loads((tmp_path / "dataset_metadata.json").read_text())
    assert [m["dataset_id"] for m in metadata] == ["h-lung", "h-blood", "h-copy", "hm-mixed", "m-brain"]
    assert metadata[0] == {"dataset_id": "h-lung", "organisms": ["homo_sapiens"], "is_primary_data": True,
                           "title": "human lung"}

    again = download_data(portal, ["homo_sapiens", "mus musculus"], tmp_path, retry_wait=0)
    assert (again["downloaded"], again["present"]) == (0, 3)
    assert set(portal.calls.values()) == {1}  # complete datasets are not fetched again


def test_download_data_retries_and_a_rerun_finishes_what_failed(tmp_path):
    portal = StandInPortal(portal_datasets(), failures={"h-lung": 2, "h-blood": 4})
    with pytest.raises(PortalError, match=r"1 of 2 datasets failed after 3 attempts \(h-blood\).*run the same command again"):
        download_data(portal, ["homo sapiens"], tmp_path, processes=2, max_retries=3, retry_wait=0)
    assert (tmp_path / "h-lung" / "__success__").exists() and portal.calls["h-lung"] == 3
    assert sorted(p.name for p in (tmp_path / "h-blood").iterdir()) == []  # no marker, no partial file

    summary = download_data(portal, ["homo sapiens"], tmp_path, max_retries=3, retry_wait=0)
    assert (summary["downloaded"], summary["present"]) == (1, 1)
    assert portal.calls == {"h-lung": 3, "h-blood": 5}
    assert anndata.read_h5ad(tmp_path / "h-blood" / "full.h5ad").n_obs == len(portal.counts("h-blood"))


def test_download_data_writes_shards_per_dataset(tmp_path):
    portal = StandInPortal(portal_datasets())
    summary = download_data(portal, ["mus musculus", "homo sapiens"], tmp_path, retry_wait=0, shard=True,
                            cells_per_shard=6)
    assert summary["sharded"] == 3
    for species, dataset_id in [("homo_sapiens", "h-lung"), ("homo_sapiens", "h-blood"), ("mus_musculus", "m-brain")]:
        shard_dir = tmp_path / "shards" / species / dataset_id
        manifest = json.loads((shard_dir / "manifest.json").read_text())
        raw = portal.counts(dataset_id)
        assert manifest["cells"] == len(raw) and len(manifest["shards"]) == -(-len(raw) // 6)
        for shard in manifest["shards"]:
            header, *cells = read_shard(str(shard_dir / shard["name"]))
            assert header["genes"] == GENES  # the var index
            for genes, counts, meta in cells:
                row = int(meta["id"].rsplit("-", 1)[1])
                assert (meta["species"], meta["dataset"], meta["obs"]["cell_type"]) == (species, dataset_id, "T cell")
                np.testing.assert_array_equal(counts, raw[row][genes])  # raw counts, from raw.X
                assert set(genes) == set(np.flatnonzero(raw[row]))
        assert sorted(p.name for p in (tmp_path / dataset_id).iterdir()) == ["__success__", "full.h5ad"]
    again = download_data(portal, ["mus musculus", "homo sapiens"], tmp_path, retry_wait=0, shard=True)
    assert (again["present"], again["sharded"]) == (3, 0)


def test_download_data_refuses_what_it_cannot_do_before_writing(tmp_path):
    with pytest.raises(PortalError, match="--shard: tfx has no species macaca_mulatta"):
        download_data(StandInPortal(portal_datasets()), ["Macaca mulatta"], tmp_path / "out", shard=True)
    with pytest.raises(PortalError, match="no --species given"):
        download_data(StandInPortal(portal_datasets()), [" , "], tmp_path / "out")
    with pytest.raises(PortalError, match=r"dataset id '\.\./evil' that is not a safe directory name"):
        download_data(StandInPortal([Dataset("../evil", ("homo_sapiens",), True)]), ["homo sapiens"],
                      tmp_path / "out", save_metadata=False)
    assert not (tmp_path / "evil").exists() and not any((tmp_path / "out").iterdir())


def test_the_census_client_is_an_optional_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellxgene_census", None)  # what import finds without the extra
    with pytest.raises(PortalError, match=r"pip install 'tfx\[data\]'"):
        CensusPortal()
