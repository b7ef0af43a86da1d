"""Shards on object storage: a real S3-compatible HTTP server (moto's standalone server, started on a
free local port and stopped at the end) that `tfx shard` writes to and training reads from through
fsspec, with the standard AWS environment; a manifest cannot point outside its prefix; a missing
credential or an unreachable endpoint is one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

s3fs = pytest.importorskip("s3fs")

from tfx.data.loader import ShardLoader, resolve_urls  # noqa: E402
from tfx.data.shards import write_shards  # noqa: E402
from tfx.errors import InputError  # noqa: E402
from tfx.recipe import compose  # noqa: E402
from tfx.synth import synth_atlas  # noqa: E402
from tfx.tokenize import Preprocessing  # noqa: E402
from tfx.vocab import GeneVocab  # noqa: E402

SPECIES = "synth_alpha"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
            "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_EC2_METADATA_DISABLED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    """moto_server on 127.0.0.1, as its own process; stopped (and waited for) at the end."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]', in tfx[test])")
    port = _free_port()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def aws(endpoint, monkeypatch, tmp_path):
    """The standard AWS environment pointing at the server, nothing else from the machine."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield env
    s3fs.S3FileSystem.clear_instance_cache()


def _bucket(name: str) -> str:
    fs = s3fs.S3FileSystem()
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    info = synth_atlas(tmp, species=1, cells=160, genes=80, seed=5)["species"][SPECIES]
    local = tmp / "local" / "cells"  # the source's name ("cells") is the same as the store prefix's
    write_shards([info["h5ad"]], SPECIES, local, cells_per_shard=20, processes=1)
    return {"h5ad": info["h5ad"], "genes": info["gene_h5"], "local": local}


def _digests(fs, prefix: str) -> dict[str, str]:
    return {p.rsplit("/", 1)[1]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(prefix)
            if p.endswith(".tar")}


def test_shard_to_the_store_equals_local_and_reads_back(aws, atlas):
    bucket = _bucket("shards")
    summary = write_shards([atlas["h5ad"]], SPECIES, f"{bucket}/run/cells", cells_per_shard=20, processes=2)
    assert summary["shards"] == 8 and summary["manifest"] == f"{bucket}/run/cells/manifest.json"
    fs = s3fs.S3FileSystem()
    local = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in atlas["local"].glob("*.tar")}
    assert _digests(fs, "shards/run/cells") == local
    assert json.loads(fs.cat_file("shards/run/cells/manifest.json"))["shards"] == \
        json.loads((atlas["local"] / "manifest.json").read_text())["shards"]
    urls = resolve_urls(f"{bucket}/run/cells")
    assert urls == [f"{bucket}/run/cells/shard-{i:06d}.tar" for i in range(8)]
    # a re-run writes nothing; a cut-short run (manifest and one shard gone) writes only what is missing
    assert write_shards([atlas["h5ad"]], SPECIES, f"{bucket}/run/cells", cells_per_shard=20)["written"] == 0
    fs.rm(["shards/run/cells/manifest.json", "shards/run/cells/shard-000003.tar"])
    assert write_shards([atlas["h5ad"]], SPECIES, f"{bucket}/run/cells", cells_per_shard=20)["written"] == 1
    assert _digests(fs, "shards/run/cells") == local

    from tfx.model.config import DataConfig

    vocab, _ = GeneVocab.from_files(DataConfig().special_tokens, [atlas["genes"]], arrays=False)
    cells = [b.n_cells for b in ShardLoader({"s3": {"urls": f"{bucket}/run/cells"}}, vocab, Preprocessing(seq_len=63),
                                             shuffle_buffer=1, epochs=1)]
    assert sum(cells) == 160


def test_a_manifest_cannot_point_outside_its_prefix(aws, atlas):
    bucket = _bucket("hostile")
    fs = s3fs.S3FileSystem()
    fs.put_file(str(atlas["local"] / "shard-000000.tar"), "hostile/other/x.tar")
    for name, entry in [("up", "../other/x.tar"), ("url", "s3://hostile/other/x.tar"), ("abs", "/hostile/other/x.tar"),
                        ("pipe", "pipe:curl http://example.org/x.tar")]:
        fs.pipe_file(f"hostile/{name}/manifest.json", json.dumps({"shards": [{"name": entry}]}).encode())
        with pytest.raises(InputError) as err:
            resolve_urls(f"{bucket}/{name}")
        assert "refused" in str(err.value) and "\n" not in str(err.value)
        assert entry in str(err.value)


def _overrides(shards, out, steps):
    return [f"data.shards={shards}", f"vocab.embeddings=[{ATLAS['genes']}]", f"output_dir={out}",
            f"trainer.max_steps={steps}", "optim.total_steps=6", "trainer.checkpoint_every_n_steps=3",
            "model.embed_dim=32", "model.model_dim=64", "data.token_budget=2048", "data.max_cells=16",
            "trainer.log_every_n_steps=1", "trainer.val_check_interval=100", "optim.warmup_steps=2"]


ATLAS: dict = {}


def _losses(run: Path) -> pd.DataFrame:
    files = sorted((run / "logs").glob("*/metrics.csv"), key=lambda p: int(p.parent.name))
    metrics = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    cols = [c for c in metrics.columns if c.startswith("train/") and "loss" in c]
    return metrics.dropna(subset=cols)[["step", *cols]].reset_index(drop=True)


@pytest.mark.slow
def test_training_from_the_store_resumes_and_equals_the_local_run(aws, atlas, tmp_path):
    from tfx.train.run import train

    ATLAS.update(atlas)
    bucket = _bucket("train")
    write_shards([atlas["h5ad"]], SPECIES, f"{bucket}/cells", cells_per_shard=20)
    for name, shards in [("local", atlas["local"]), ("store", f"{bucket}/cells")]:
        train(compose("pretrain/tiny", _overrides(shards, tmp_path / name, 3)))
        train(compose("pretrain/tiny", _overrides(shards, tmp_path / name, 6)))  # resume=auto: steps 3..5
    local, store = _losses(tmp_path / "local"), _losses(tmp_path / "store")
    assert list(store["step"]) == list(local["step"]) and store["step"].max() >= 5
    assert len(list((tmp_path / "store" / "logs").glob("*/metrics.csv"))) == 2  # it did resume
    pd.testing.assert_frame_equal(store, local, check_exact=True)


def _cli(args, env):
    base = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    return subprocess.run([sys.executable, "-m", "tfx.cli", *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_missing_credentials_and_unreachable_endpoint_are_one_line(aws, atlas, tmp_path):
    _bucket("guarded")
    shard = ["shard", "--input", str(atlas["h5ad"]), "--species", SPECIES, "--cells-per-shard", "40", "--output"]
    no_credentials = {k: v for k, v in aws.items() if k not in CREDENTIALS or k == "AWS_DEFAULT_REGION"}
    dead = {**aws, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_MAX_ATTEMPTS": "2"}
    cases = [
        (shard + ["s3://guarded/cells"], no_credentials, "no credentials"),
        (["train", "pretrain/tiny", "data.shards=s3://guarded/cells", f"vocab.embeddings=[{atlas['genes']}]",
          f"output_dir={tmp_path / 'run'}"],
         no_credentials, "no credentials"),
        (shard + ["s3://guarded/cells"], dead, "cannot reach the object store"),
    ]
    for args, env, message in cases:
        done = _cli(args, env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and message in lines[0], done.stderr
    assert s3fs.S3FileSystem().ls("guarded", detail=False) == []  # nothing written
    assert not (tmp_path / "run").exists()
