"""`tfx infer --data` with several h5ad files or a directory of `tfx shard` shards: one output whose rows
are the inputs' cells in order, each cell's numbers those of its file run alone, on the one-process
road and on the chunked one (--devices 2); bad inputs are one line with nothing written."""

from __future__ import annotations

import json
import logging
import shutil

import anndata
import numpy as np
import pandas as pd
import pytest

import reference
import tfx
from conftest import write_h5ad
from tfx.cli import main
from tfx.checkpoint import load_checkpoint
from tfx.data.inputs import SOURCE_COLUMN
from tfx.infer.run import InferOptions, _run_key

GENES = [f"ENSMUSG{i:011d}" for i in range(300)]
SPECIES = "mus_musculus"
CLOSE = dict(rtol=1e-5, atol=1e-6)  # one process, other batches: the engine pads per batch (test_infer.py)
ACROSS = dict(rtol=1e-4, atol=1e-4)  # across processes (test_infer.py says why)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return reference.build_reference_checkpoint(tmp_path_factory.mktemp("inputs") / "ckpt",
                                                {SPECIES: GENES[:250]}, seq_len=63, seed=1)


def _file(path, n, seed, genes=GENES, names="c"):
    """``n`` cells over ``genes`` (a file of its own var), with an assay and a cell type."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, len(genes))) < 0.2) * rng.integers(1, 50, size=(n, len(genes)))
    x[1] = 0  # a cell without any expressed gene
    obs = pd.DataFrame({"assay": rng.choice(["10x 3' v3", "10x 3' v2"], n), "cell_type": rng.choice(["t", "b"], n)},
                       index=[f"{names}{i}" for i in range(n)])
    return write_h5ad(path, genes, x.astype(np.float32), obs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    # the second file lists other genes, in another order, some outside the vocabulary
    other = list(np.random.default_rng(5).permutation(GENES[100:]))
    return [_file(d / "a.h5ad", 40, 0), _file(d / "b.h5ad", 23, 1, genes=other, names="b")]


def _run(ckpt, data, out, *extra):
    return main(["infer", "--checkpoint", str(ckpt), "--data", *map(str, data), "--output", str(out), "--device", "cpu",
                 "--outputs", "embeddings,llh", *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _assert_rows(whole: anndata.AnnData, parts: list[anndata.AnnData], close=CLOSE):
    """``whole``'s rows are ``parts``' rows one after another: names, obs values and numbers."""
    assert list(whole.obs_names) == [n for p in parts for n in p.obs_names]
    for col in ("assay", "cell_type"):
        assert list(whole.obs[col].astype(str)) == [v for p in parts for v in p.obs[col].astype(str)]
    np.testing.assert_allclose(whole.obsm["embeddings"], np.concatenate([p.obsm["embeddings"] for p in parts]), **close)
    np.testing.assert_allclose(whole.obs["llh"], np.concatenate([p.obs["llh"] for p in parts]), **close)


@pytest.fixture(scope="module")
def alone(ckpt, files, tmp_path_factory):
    """Each file run alone."""
    d = tmp_path_factory.mktemp("alone")
    for i, f in enumerate(files):
        assert _run(ckpt, [f], d / f"{i}.h5ad") == 0
    return [anndata.read_h5ad(d / f"{i}.h5ad") for i in range(len(files))]


def test_several_files_are_one_output_of_each_files_cells(ckpt, files, alone, tmp_path):
    # chunks of 7 rows: the chunk of rows 35..42 holds cells of both files
    assert _run(ckpt, files, tmp_path / "one.h5ad", "--chunk-size", "7") == 0
    one = anndata.read_h5ad(tmp_path / "one.h5ad")
    _assert_rows(one, alone)
    assert SOURCE_COLUMN not in one.obs  # the names are unique: obs is the files' obs, nothing added


@pytest.mark.slow
@pytest.mark.parametrize("inputs", ["files", "shards"])
def test_two_processes_split_the_cells_of_every_input(ckpt, files, shards, alone, tmp_path, inputs):
    """--devices 2 (the road torchrun and srun take): the chunks cover the cells of all inputs."""
    data = files if inputs == "files" else [shards]
    assert _run(ckpt, data, tmp_path / "two.h5ad", "--chunk-size", "7", "--devices", "2") == 0
    _assert_rows(anndata.read_h5ad(tmp_path / "two.h5ad"), alone, ACROSS)
    assert not (tmp_path / "two.h5ad.parts").exists()


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_repeated_names_across_files_add_the_source_file(ckpt, files, tmp_path):
    again = shutil.copy(files[0], tmp_path / "again.h5ad")
    assert _run(ckpt, [files[0], again], tmp_path / "o.h5ad") == 0
    out = anndata.read_h5ad(tmp_path / "o.h5ad")
    assert list(out.obs_names) == [f"c{i}" for i in range(40)] * 2
    assert list(out.obs[SOURCE_COLUMN]) == [str(files[0])] * 40 + [str(again)] * 40
    np.testing.assert_allclose(out.obsm["embeddings"][:40], out.obsm["embeddings"][40:], **CLOSE)


def test_the_run_key_follows_the_list_of_inputs(ckpt, files):
    model, opts = load_checkpoint(ckpt), InferOptions()
    keys = {_run_key(model, inputs, opts) for inputs in ([files[0]], files, files[::-1])}
    assert len(keys) == 3


@pytest.fixture(scope="module")
def shards(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shards"
    assert main(["shard", "--input", *map(str, files), "--species", SPECIES, "--output", str(out),
                 "--cells-per-shard", "9", "--processes", "1"]) == 0
    return out


def test_a_shard_directory_is_the_cells_of_the_files_it_was_made_from(ckpt, shards, alone, tmp_path):
    """Shards keep each cell's genes, raw counts, name, assay and cell type: what infer reads of the h5ad."""
    assert _run(ckpt, [shards], tmp_path / "one.h5ad", "--chunk-size", "7") == 0
    one = anndata.read_h5ad(tmp_path / "one.h5ad")
    _assert_rows(one, alone)
    assert set(one.obs.columns) == {"assay", "cell_type", "llh"}  # the obs columns the shards kept
    # the Python API reads the same inputs, into a new AnnData
    model = tfx.load(ckpt)
    for data in ([str(shards)], shards):
        got = tfx.embed(data, model, device="cpu", outputs=("embeddings", "llh"))
        _assert_rows(_as_output(got), alone)


def _as_output(adata: anndata.AnnData) -> anndata.AnnData:
    adata.obsm["embeddings"] = adata.obsm["X_tfx"]
    return adata


def test_the_api_embeds_a_list_of_files(ckpt, files, alone):
    got = tfx.embed([str(f) for f in files], tfx.load(ckpt), device="cpu", outputs=("embeddings", "llh"))
    _assert_rows(_as_output(got), alone)


def _corrupt(shards, tmp_path):
    bad = shutil.copytree(shards, tmp_path / "corrupt")
    shard = bad / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    return [bad], "shard-000002.tar: unreadable or corrupt"


def _without_manifest(shards, tmp_path):
    bad = shutil.copytree(shards, tmp_path / "unfinished")
    (bad / "manifest.json").unlink()
    return [bad], "a tfx shard directory without manifest.json (tfx shard has not finished it)"


def _outside(shards, tmp_path):
    bad = shutil.copytree(shards, tmp_path / "outside")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../elsewhere.tar"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    return [bad], "is not a plain .tar file name beside the manifest; refused"


def _other_species(files, tmp_path):
    out = tmp_path / "human"
    assert main(["shard", "--input", str(files[0]), "--species", "homo_sapiens", "--output", str(out),
                 "--processes", "1"]) == 0
    return [out], "shards of species homo_sapiens (manifest.json), the checkpoint's vocabulary holds mus_musculus"


def _other_genes(tmp_path):
    out = tmp_path / "other_genes"
    source = _file(tmp_path / "other.h5ad", 5, 2, genes=[f"OTHER{i}" for i in range(50)])
    assert main(["shard", "--input", str(source), "--species", SPECIES, "--output", str(out), "--processes", "1"]) == 0
    return [out], "shard-000000.tar: none of the 50 genes of its gene table is in the model's vocabulary"


BAD = {
    "missing-file": lambda files, shards, tmp: ([files[0], tmp / "nope.h5ad"], "nope.h5ad: no such file; check the path"),
    "soma-and-file": lambda files, shards, tmp: (["s3://bucket/census", files[0]],
                                                 "--data: s3://bucket/census is read as a TileDB-SOMA experiment"),
    "empty-dir-in-a-list": lambda files, shards, tmp: ([files[0], (tmp / "empty").mkdir() or tmp / "empty"],
                                                       "empty is read as a TileDB-SOMA experiment (a directory "
                                                       "without a tfx shard manifest.json"),
    "no-manifest": lambda files, shards, tmp: _without_manifest(shards, tmp),
    "corrupt-shard": lambda files, shards, tmp: _corrupt(shards, tmp),
    "entry-outside": lambda files, shards, tmp: _outside(shards, tmp),
    "other-species": lambda files, shards, tmp: _other_species(files, tmp),
    "other-genes": lambda files, shards, tmp: _other_genes(tmp),
}


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("devices", ["1", "2"])
def test_bad_inputs_are_one_line_and_nothing_is_written(ckpt, files, shards, tmp_path, capsys, case, devices):
    data, message = BAD[case](files, shards, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _run(ckpt, data, tmp_path / "o.h5ad", "--devices", devices) == 2
    line = _error(capsys)
    assert message in line, line
    if case not in ("soma-and-file", "entry-outside", "other-species"):
        assert "tfx shard" in line or "check the path" in line or "TileDB-SOMA" in line, line  # the fix
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no chunks, no temporary


def test_an_empty_directory_alone_names_both_kinds_of_directory(ckpt, tmp_path, capsys, caplog):
    pytest.importorskip("tiledbsoma")
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING):
        assert _run(ckpt, [tmp_path / "empty"], tmp_path / "o.h5ad") == 2
    line = _error(capsys)
    assert "no TileDB-SOMA experiment there" in line and "a tfx shard directory by its manifest.json" in line
    assert not (tmp_path / "o.h5ad").exists()


@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
def test_a_directory_holding_a_fifo_or_an_empty_path_is_refused_not_waited_on(tmp_path):
    """tiledb opened each file of a directory given as --data/--input to find an experiment, and
    waited forever on a FIFO there; '' named the current directory (tfx.embed('') hung on one)."""
    import os
    import subprocess
    import sys

    from tfx.data.inputs import input_list
    from tfx.errors import InputError

    pytest.importorskip("tiledbsoma")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe")
    done = subprocess.run([sys.executable, "-m", "tfx.cli", "shard", "--input", str(tmp_path / "d"), "--species",
                           "synth_alpha", "--output", str(tmp_path / "sh")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no TileDB-SOMA experiment there" in done.stderr, done.stderr
    assert not (tmp_path / "sh").exists()
    for empty in ("", [tmp_path / "d", ""]):
        with pytest.raises(InputError, match="--data: name an h5ad file"):
            input_list(empty)
    with pytest.raises(InputError, match="--data: None is a NoneType"):
        input_list([tmp_path / "d", None])  # was a TypeError from pathlib
