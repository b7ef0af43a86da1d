"""`tfx shard`: h5ad files -> WebDataset shards that read back exactly; parallel, deterministic,
atomic per shard, resumable after a kill; bad input refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import json
import re
import multiprocessing as mp
import os
import signal
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from conftest import MOUSE, write_h5ad
from tfx.errors import InputError
from tfx.data import shards
from tfx.data.anndata import CellReader
from tfx.data.labels import LabelCodec
from tfx.data.shards import HEADER_KEY, ShardError, decode_expr, encode_expr, read_shard, write_shards


def read_back(out: Path) -> tuple[dict, list[tuple]]:
    """The manifest, and every cell of every shard in manifest order: (gene ids, counts, metadata)."""
    manifest = json.loads((out / "manifest.json").read_text())
    cells = []
    for shard in manifest["shards"]:
        it = read_shard(str(out / shard["name"]))
        table = np.array(next(it)["genes"])
        cells += [(table[genes], counts, meta) for genes, counts, meta in it]
    return manifest, cells


def expected_cells(path: Path, gene_col: str = "ensembl_id") -> list[tuple]:
    adata = anndata.read_h5ad(path)
    genes = np.array([g.split(".")[0] for g in adata.var[gene_col].astype(str)])
    x = adata.X.tocsr()
    x.sort_indices()
    return [(genes[x[i].indices], x[i].data.astype(np.float32), adata.obs.iloc[i], adata.obs_names[i])
            for i in range(adata.n_obs)]


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*")) if p.is_file()}


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def mouse_path():
    if not MOUSE.exists():
        pytest.skip(f"real data {MOUSE} is absent (it lives in ../shared/data beside the project)")
    return MOUSE


def test_real_cells_read_back_exactly(mouse_path, tmp_path):
    extra = ["donor_id", "cluster_confidence_score", "high_quality_transfer"]
    summary = write_shards([mouse_path], "mus_musculus", tmp_path, cells_per_shard=300, obs_keys=extra, processes=2)
    assert summary["shards"] == summary["written"] == 4 and summary["cells"] == 1000

    manifest, cells = read_back(tmp_path)
    assert [s["rows"] for s in manifest["shards"]] == [[0, 300], [300, 600], [600, 900], [900, 1000]]
    assert {s["source"] for s in manifest["shards"]} == {"mouse_val.h5ad"} and manifest["species"] == "mus_musculus"
    expected = expected_cells(mouse_path)
    assert len(cells) == len(expected) == 1000
    for (genes, counts, meta), (e_genes, e_counts, e_obs, name) in zip(cells, expected):
        np.testing.assert_array_equal(genes, e_genes)
        np.testing.assert_array_equal(counts, e_counts)
        assert meta["id"] == name and meta["species"] == "mus_musculus" and meta["dataset"] == "mouse_val"
        assert meta["obs"] == {k: e_obs[k].item() if hasattr(e_obs[k], "item") else e_obs[k]
                               for k in ["cell_type", "assay", "tissue", *extra]}
    nonzero = sum(len(c[0]) for c in cells[:300])
    assert manifest["shards"][0]["nonzero"] == nonzero
    assert manifest["shards"][0]["genes"] == len(set(np.concatenate([c[0] for c in cells[:300]])))

    # Plain webdataset reads them too: a header sample, then cells with a decodable npy and json.
    samples = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False).decode())
    assert samples[0]["__key__"] == HEADER_KEY and len(samples) == 301
    assert samples[1]["expr.npy"]["count"].sum() == expected[0][1].sum() and samples[1]["json"]["id"] == expected[0][3]


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_odd_files_round_trip_with_safe_keys(tmp_path):
    rng = np.random.default_rng(0)
    names = ["a.b/c d", "x" * 200, "ünï cödé", "a.b/c d", "plain", "empty", "frac", "huge"]
    counts = rng.integers(0, 4, size=(len(names), 30)).astype(np.float32)
    counts[5] = 0  # a cell without genes is kept
    counts[6, :3] = [0.5, 1.25, 2.0]  # non-integer values are stored exactly
    counts[7, 0] = 70000  # beyond 16 bits
    obs = pd.DataFrame({"cell_type": pd.Categorical(["t1", "t2", None, "t1", "t2", "t1", "t1", "t2"]),
                        "batch": np.arange(8)}, index=names)
    a = write_h5ad(tmp_path / "a.h5ad", [f"ENSG{i:05d}.{i % 3}" for i in range(30)], counts, obs)
    b = write_h5ad(tmp_path / "b.h5ad", [f"ENSG{i:05d}" for i in range(100, 140)],
                   rng.integers(0, 3, size=(5, 40)), pd.DataFrame({"batch": ["x"] * 5}, index=list("vwxyz")))
    out = tmp_path / "shards"
    write_shards([a, b], "homo_sapiens", out, cells_per_shard=3, obs_keys=["batch"], processes=1)

    manifest, cells = read_back(out)
    assert [(s["source"], s["rows"]) for s in manifest["shards"]] == [
        ("a.h5ad", [0, 3]), ("a.h5ad", [3, 6]), ("a.h5ad", [6, 8]), ("b.h5ad", [0, 3]), ("b.h5ad", [3, 5])]
    expected = expected_cells(a) + expected_cells(b)
    assert len(cells) == len(expected) == 13
    for (genes, counts, meta), (e_genes, e_counts, _, name) in zip(cells, expected):
        np.testing.assert_array_equal(genes, e_genes)  # version suffixes stripped
        np.testing.assert_array_equal(counts, e_counts)
        assert meta["id"] == name
    assert len(cells[5][0]) == 0 and cells[7][1].max() == 70000
    assert cells[2][2]["obs"] == {"cell_type": None, "batch": 2}
    assert cells[8][2]["obs"] == {"batch": "x"} and cells[8][2]["dataset"] == "b"  # no default column in b

    members = [m for s in manifest["shards"] for m in wds.tariterators.tar_file_iterator(open(out / s["name"], "rb"))]
    keys = [m["fname"].split(".")[0] for m in members if m["fname"].endswith(".json")]
    assert all(re.fullmatch(r"(__shard__|r\d{9}_[A-Za-z0-9_-]{0,64})", k) for k in keys)
    assert len(keys) == 13 + 5 and len(set(keys) - {HEADER_KEY}) == 13  # duplicate cell names, unique keys
    assert max(len(m["fname"]) for m in members) < 100  # fits a ustar name

    big = np.arange(0, 140000, 2)  # a gene table beyond 16 bits
    genes, counts = decode_expr(encode_expr(big, np.full(len(big), 3.0, np.float32), 140001))
    assert genes.dtype == np.uint32 and (genes == big).all() and (counts == 3).all()


def _values_removed(path: Path, column: str) -> Path:
    """``path`` with obs ``column``'s values moved to an external file, then that file removed: the
    column is still listed (its metadata is intact), and any read of its values fails."""
    values_file = path.with_suffix(".values")
    with h5py.File(path, "r+") as f:
        values, attrs = f["obs"][column][()], dict(f["obs"][column].attrs)
        del f["obs"][column]
        values.tofile(values_file)
        stored = f["obs"].create_dataset(column, shape=values.shape, dtype=values.dtype,
                                         external=[(str(values_file), 0, values.nbytes)])
        stored.attrs.update(attrs)
    values_file.unlink()
    return path


def test_obs_is_read_in_the_rows_and_columns_needed(tmp_path):
    """An obs column no option names is never read: the shards and the training road's chunks (aux
    ids, labels) of a file whose column cannot be read at all equal those of the intact file."""
    rng = np.random.default_rng(3)
    n, genes = 50, [f"ENSG{i:05d}" for i in range(30)]
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["t1", "t2", "t3"], n)),
                        "assay": pd.Categorical(rng.choice(["10x 3' v3", "Smart-seq2"], n)),
                        "depth": rng.integers(0, 9, n), "unused": rng.random(n)},
                       index=[f"cell{i}" for i in range(n)])
    counts = rng.integers(0, 4, size=(n, len(genes)))
    for name in ("intact", "removed"):
        (tmp_path / name).mkdir()
    intact = write_h5ad(tmp_path / "intact" / "a.h5ad", genes, counts, obs)
    removed = _values_removed(write_h5ad(tmp_path / "removed" / "a.h5ad", genes, counts, obs), "unused")
    with pytest.raises(OSError):  # reading the whole obs, as anndata's backed mode does, fails on it
        anndata.read_h5ad(removed, backed="r")

    for path in (intact, removed):
        write_shards([path], "homo_sapiens", path.parent / "shards", cells_per_shard=16, obs_keys=["depth"],
                     processes=1)
    shard_digests = [{k: v for k, v in digests(p.parent / "shards").items() if k.startswith("shard-")}
                     for p in (intact, removed)]
    assert len(shard_digests[0]) == 4 and shard_digests[0] == shard_digests[1]

    chunks = []
    for path in (intact, removed):
        reader = CellReader(path, aux_vocabs={"assay": {"unknown": 0, "10x 3' v3": 1}},
                            labels=LabelCodec("cell_type", ["t1", "t2", "t3"]))
        assert reader.read_obs([]).index.tolist() == obs.index.tolist()
        chunks.append([(c.first, c.aux_ids, c.labels) for c in reader.chunks(chunk_size=16)])
        reader.close()
    assert [first for first, _, _ in chunks[1]] == [0, 16, 32, 48]
    for (_, aux, labels), (_, aux_removed, labels_removed) in zip(*chunks):
        np.testing.assert_array_equal(aux, aux_removed)
        np.testing.assert_array_equal(labels, labels_removed)
    assert np.concatenate([labels for _, _, labels in chunks[1]]).tolist() == \
        [["t1", "t2", "t3"].index(t) for t in obs["cell_type"]]
    assert np.concatenate([aux[:, 0] for _, aux, _ in chunks[1]]).tolist() == list(obs["assay"] == "10x 3' v3")


@pytest.fixture(scope="module")
def reference(mouse_path, tmp_path_factory) -> dict[str, str]:
    """Digests of an uninterrupted parallel run: 10 shards of 100 real cells."""
    out = tmp_path_factory.mktemp("reference")
    write_shards([mouse_path], "mus_musculus", out, cells_per_shard=100, processes=2)
    return digests(out)


def test_parallel_deterministic_and_resumable(mouse_path, reference, tmp_path):
    write_shards([mouse_path], "mus_musculus", tmp_path, cells_per_shard=100, processes=1)
    assert len(reference) == 11 and digests(tmp_path) == reference  # as many processes as you like, same bytes

    # The states a kill can leave: a shard missing, a shard renamed but not recorded, a temporary.
    (tmp_path / "shard-000003.tar").unlink()
    (tmp_path / ".progress" / "shard-000003.tar.json").unlink()
    (tmp_path / ".progress" / "shard-000005.tar.json").unlink()
    (tmp_path / "shard-000007.tar").rename(tmp_path / ".shard-000007.tar.tmp-99999")
    (tmp_path / ".progress" / "shard-000007.tar.json").unlink()
    (tmp_path / "manifest.json").unlink()
    summary = write_shards([mouse_path], "mus_musculus", tmp_path, cells_per_shard=100, processes=2)
    assert summary["written"] == 3 and digests(tmp_path) == reference
    assert not list(tmp_path.glob(".*tmp*"))


def _write_then_die(mouse_path, out, at_cell):
    """In a forked child: write shards and SIGKILL itself while encoding cell ``at_cell``."""
    encode, calls = shards.encode_expr, []

    def encode_or_die(*args):
        calls.append(1)
        if len(calls) == at_cell:
            os.kill(os.getpid(), signal.SIGKILL)
        return encode(*args)

    shards.encode_expr = encode_or_die
    write_shards([mouse_path], "mus_musculus", out, cells_per_shard=100, processes=1)


def test_killed_run_completes_identically(mouse_path, reference, tmp_path):
    child = mp.get_context("fork").Process(target=_write_then_die, args=(mouse_path, tmp_path, 451))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(4)]
    assert len(list(tmp_path.glob(".shard-000004.tar.tmp-*"))) == 1  # half-written, under its temporary name
    summary = write_shards([mouse_path], "mus_musculus", tmp_path, cells_per_shard=100, processes=2)
    assert summary["written"] == 6 and digests(tmp_path) == reference
    assert not list(tmp_path.glob(".*tmp*"))


def test_unknown_species_lists_the_known_ones(tmp_path):
    data = write_h5ad(tmp_path / "in.h5ad", ["ENSG1", "ENSG2"], [[1, 0]])
    with pytest.raises(InputError) as err:
        write_shards([data], "homo_sapien", tmp_path / "out")
    msg = one_line(err)
    assert "unknown species" in msg and "homo_sapiens" in msg and "mus_musculus" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "make, options, message",
    [
        (lambda p: p.write_text("not hdf5"), {}, "not a readable h5ad"),
        (lambda p: write_h5ad(p, ["ENSG1", "ENSG1.2"], [[1, 2]]), {}, "duplicate genes"),
        (lambda p: anndata.AnnData(np.ones((1, 2)), var=pd.DataFrame({"symbol": ["A", "B"]}, index=["a", "b"])
                   ).write_h5ad(p), {}, "no gene column 'ensembl_id'"),
        (lambda p: write_h5ad(p, ["ENSG1", "ENSG2"], [[1, 2]]), {"obs_keys": ["donor"]}, "no column donor"),
        (lambda p: None, {}, "no such file"),
    ],
    ids=["not-h5ad", "duplicates", "gene-col", "obs-key", "missing"],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, make, options, message):
    good = write_h5ad(tmp_path / "good.h5ad", ["ENSG1", "ENSG2"], [[1, 2]], pd.DataFrame({"donor": ["d"]}, index=["c"]))
    bad = tmp_path / "bad.h5ad"
    make(bad)
    with pytest.raises(InputError) as err:
        write_shards([good, bad], "homo_sapiens", tmp_path / "out", **options)
    msg = one_line(err)
    assert message in msg and "bad.h5ad" in msg
    assert not (tmp_path / "out").exists()


def test_bad_values_midway_leave_only_whole_shards(tmp_path):
    counts = np.ones((40, 5), dtype=np.float32)
    counts[33, 2] = np.nan
    data = write_h5ad(tmp_path / "nan.h5ad", [f"ENSG{i}" for i in range(5)], counts)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"nan.h5ad: X holds NaN"):
        write_shards([data], "homo_sapiens", out, cells_per_shard=10, processes=2)
    assert not (out / "manifest.json").exists() and not list(out.glob(".*tmp*"))
    for shard in out.glob("*.tar"):  # whatever was renamed into place is whole
        assert sum(1 for _ in read_shard(str(shard))) == 11


def test_output_of_another_run_is_refused(tmp_path):
    data = write_h5ad(tmp_path / "in.h5ad", ["ENSG1", "ENSG2"], [[1, 2], [3, 0]])
    write_shards([data], "homo_sapiens", tmp_path / "out", cells_per_shard=1)
    with pytest.raises(InputError, match="another run") as err:
        write_shards([data], "homo_sapiens", tmp_path / "out", cells_per_shard=2)
    one_line(err)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty directory"):
        write_shards([data], "homo_sapiens", tmp_path / "other")


@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
def test_a_second_run_into_the_same_output_is_refused_while_the_first_writes(tmp_path):
    """The lock a running tfx shard holds (taken here in another process, as a second run would)."""
    data = write_h5ad(tmp_path / "in.h5ad", ["ENSG1", "ENSG2"], [[1, 2], [3, 0]])
    out = tmp_path / "out"
    write_shards([data], "homo_sapiens", out, cells_per_shard=1)
    (out / "shard-000001.tar").unlink()  # a run that has one shard left to write
    ctx = mp.get_context("spawn")
    holding, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out / shards.PROGRESS), holding, release))
    holder.start()
    try:
        assert holding.wait(60)
        with pytest.raises(InputError, match="another tfx run is writing this shard directory") as err:
            write_shards([data], "homo_sapiens", out, cells_per_shard=1)
        one_line(err)
        assert not (out / "shard-000001.tar").exists()
    finally:
        release.set()
        holder.join(60)
    assert write_shards([data], "homo_sapiens", out, cells_per_shard=1)["written"] == 1  # once it is free


def _hold_lock(directory: str, holding, release) -> None:
    from tfx.atomic import exclusive

    with exclusive(directory, "shard directory"):
        holding.set()
        release.wait(60)


def test_truncated_shard_is_detected(tmp_path):
    data = write_h5ad(tmp_path / "in.h5ad", [f"ENSG{i}" for i in range(5)], np.ones((50, 5)))
    write_shards([data], "homo_sapiens", tmp_path / "out", cells_per_shard=50)
    shard = tmp_path / "out" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"shard-000000.tar: truncated or damaged, \d+ of the 50 cells"):
        list(read_shard(str(shard)))
