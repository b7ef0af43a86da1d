"""TileDB-SOMA in: a real local experiment (tiledbsoma.io.from_anndata of synthetic cells) read by
`tfx shard` and `tfx infer` as the h5ad of the same cells is read: byte-identical shards, equal
embeddings; obs filters select what pandas selects; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anndata
import numpy as np
import pytest

tiledbsoma = pytest.importorskip("tiledbsoma")
import tiledbsoma.io  # noqa: E402, F811  (the submodule, after the skip)

import reference  # noqa: E402
from tfx.cli import main  # noqa: E402
from tfx.data.shards import write_shards  # noqa: E402
from tfx.data.sources import open_reader  # noqa: E402
from tfx.synth import synth_atlas  # noqa: E402

SPECIES = "synth_alpha"
LUNG = "is_primary_data == True and tissue_general == 'lung'"
FILTERS = [
    LUNG,
    "cell_type in ['B cell', 'T cell'] or n_counts > 300",
    "n_counts >= 150 and n_counts < 400 and tissue_general != 'blood'",
    "is_primary_data == False",
    "score > 0.5 and (tissue_general == 'blood' or tissue_general == 'brain')",
]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """The synthetic atlas with Census-like obs columns, as an h5ad and as a SOMA experiment."""
    tmp = tmp_path_factory.mktemp("soma")
    info = synth_atlas(tmp / "synth", species=1, cells=240, genes=90, seed=3)["species"][SPECIES]
    adata = anndata.read_h5ad(info["h5ad"])
    rng = np.random.default_rng(0)
    adata.obs["is_primary_data"] = rng.random(adata.n_obs) < 0.7
    adata.obs["tissue_general"] = rng.choice(["lung", "blood", "brain"], adata.n_obs)
    adata.obs["tissue_general"] = adata.obs["tissue_general"].astype("category")
    adata.obs["n_counts"] = np.asarray(adata.X.sum(1)).ravel().astype(np.int64)
    adata.obs["score"] = rng.random(adata.n_obs)
    adata.write_h5ad(tmp / "atlas.h5ad")
    uri = tiledbsoma.io.from_anndata(str(tmp / "experiments" / "atlas"), adata, measurement_name="RNA")
    return {"adata": adata, "h5ad": tmp / "atlas.h5ad", "soma": uri, "tmp": tmp, "genes": info["gene_h5"]}


def _subset(atlas, expr: str, folder: str) -> Path:
    """The h5ad of the cells pandas' obs.query selects, named as the experiment is (the name is the
    dataset's, recorded in the shards)."""
    path = atlas["tmp"] / folder / "atlas"
    if not path.exists():
        path.parent.mkdir()
        adata = atlas["adata"]
        adata[adata.obs.query(expr).index].copy().write_h5ad(path)
    return path


def _shards(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("expr", FILTERS)
def test_obs_filter_selects_what_pandas_selects(atlas, expr):
    expected = atlas["adata"].obs.query(expr)
    reader = open_reader(atlas["soma"], obs_filter=expr)
    try:
        assert 0 < reader.n_cells < atlas["adata"].n_obs
        assert list(reader.read_obs().index) == list(expected.index)
        assert list(reader.read_obs(["tissue_general"])["tissue_general"].astype(str)) == list(expected["tissue_general"].astype(str))
    finally:
        reader.close()


def test_rows_equal_the_h5ad_rows(atlas):
    soma, h5ad = open_reader(atlas["soma"]), open_reader(atlas["h5ad"])
    try:
        assert soma.n_cells == h5ad.n_cells and list(soma.genes) == list(h5ad.genes)
        for (first_a, a), (first_b, b) in zip(soma.iter_chunks(64), h5ad.iter_chunks(64), strict=True):
            assert first_a == first_b
            for (ga, ca), (gb, cb) in zip(a, b, strict=True):
                np.testing.assert_array_equal(ga, gb)
                np.testing.assert_array_equal(ca, cb)
    finally:
        soma.close()
        h5ad.close()


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_soma_shards_are_byte_identical_to_h5ad_shards(atlas, tmp_path, processes):
    h5ad = _subset(atlas, LUNG, "lung_h5ad")
    common = dict(cells_per_shard=20, obs_keys=["tissue_general"], processes=processes)
    from_h5ad = write_shards([h5ad], SPECIES, tmp_path / "h5ad", **common)
    assert main(["shard", "--input", atlas["soma"], "--measurement", "RNA", "--obs-filter", LUNG, "--species",
                 SPECIES, "--output", str(tmp_path / "soma"), "--cells-per-shard", "20", "--obs-keys",
                 "tissue_general", "--processes", str(processes)]) == 0
    expected = _shards(tmp_path / "h5ad")
    assert len(expected) == from_h5ad["shards"] >= 3
    assert _shards(tmp_path / "soma") == expected
    manifest = json.loads((tmp_path / "soma" / "manifest.json").read_text())
    assert manifest["cells"] == len(atlas["adata"].obs.query(LUNG))
    assert manifest["inputs"][0]["obs_filter"] == LUNG and manifest["inputs"][0]["uri"] == atlas["soma"]
    # a re-run finds every shard written
    assert write_shards(atlas["soma"], SPECIES, tmp_path / "soma", obs_filter=LUNG, cells_per_shard=20,
                        obs_keys=["tissue_general"])["written"] == 0


@pytest.fixture(scope="module")
def ckpt(atlas):
    genes = list(atlas["adata"].var["ensembl_id"])
    return reference.build_reference_checkpoint(atlas["tmp"] / "ckpt", {"synthetic": genes[:80]}, seq_len=63, seed=1)


def test_soma_inference_equals_h5ad_inference(atlas, ckpt, tmp_path):
    expr = FILTERS[1]
    h5ad = _subset(atlas, expr, "infer_h5ad")
    base = ["infer", "--checkpoint", str(ckpt), "--device", "cpu", "--outputs", "embeddings,llh", "--chunk-size", "50"]
    assert main([*base, "--data", str(h5ad), "--output", str(tmp_path / "h5ad.h5ad")]) == 0
    assert main([*base, "--data", atlas["soma"], "--obs-filter", expr, "--output", str(tmp_path / "soma.h5ad")]) == 0
    a, b = anndata.read_h5ad(tmp_path / "h5ad.h5ad"), anndata.read_h5ad(tmp_path / "soma.h5ad")
    assert list(b.obs_names) == list(a.obs_names) == list(atlas["adata"].obs.query(expr).index)
    np.testing.assert_array_equal(b.obsm["embeddings"], a.obsm["embeddings"])
    np.testing.assert_array_equal(b.obs["llh"], a.obs["llh"])
    assert list(b.obs["cell_type"].astype(str)) == list(a.obs["cell_type"].astype(str))


def test_soma_embed_in_python_equals_the_file_path(atlas, ckpt, tmp_path):
    import tfx

    model = tfx.load(ckpt)
    got = tfx.embed(atlas["soma"], model, obs_filter=LUNG, device="cpu")
    want = tfx.embed(anndata.read_h5ad(_subset(atlas, LUNG, "embed_h5ad")), model, device="cpu")
    assert list(got.obs_names) == list(want.obs_names)
    np.testing.assert_array_equal(got.obsm["X_tfx"], want.obsm["X_tfx"])


def test_bad_soma_input_is_one_line_exit_2_and_writes_nothing(atlas, ckpt, tmp_path, capsys):
    not_soma = tmp_path / "not_an_experiment"
    not_soma.mkdir()
    shard = ["shard", "--species", SPECIES, "--output"]
    cases = [
        ([*shard, str(tmp_path / "o1"), "--input", str(not_soma)], "no TileDB-SOMA experiment there"),
        ([*shard, str(tmp_path / "o2"), "--input", atlas["soma"], "--obs-filter", "tissue == 'lung'"],
         "has no column 'tissue'"),
        ([*shard, str(tmp_path / "o3"), "--input", atlas["soma"], "--measurement", "ATAC"], "no measurement 'ATAC'"),
        ([*shard, str(tmp_path / "o4"), "--input", atlas["soma"], "--obs-filter", "n_counts > 1e9"],
         "selects no cell"),
        ([*shard, str(tmp_path / "o5"), "--input", str(atlas["h5ad"]), "--obs-filter", LUNG],
         "selects cells of a TileDB-SOMA experiment"),
        (["infer", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(tmp_path / "o6.h5ad"),
          "--data", str(not_soma)], "no TileDB-SOMA experiment there"),
        (["infer", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(tmp_path / "o7.h5ad"),
          "--data", atlas["soma"], "--obs-filter", "lung == True"], "has no column 'lung'"),
        (["infer", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(tmp_path / "o8.h5ad"),
          "--data", atlas["soma"], "--obs-filter", "n_counts > 1e9"], "selects no cell; nothing to embed"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in _one_line(capsys), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_an_experiment"]  # nothing written


class StandInCensus:
    """The Census client interface `tfx download-data --from-census` drives, over a local experiment
    laid out as the Census's is (Ensembl ids in var feature_id, counts in the X layer "raw"); only
    the network call of the real client (CensusPortal.experiment) is left out."""

    def __init__(self, uris: dict[str, str]):
        self.uris = uris
        self.asked: list[str] = []

    def experiment(self, species):
        from tfx.data.soma import SomaSource

        self.asked.append(species)
        return SomaSource(self.uris[species])


def test_download_data_streams_a_species_from_the_census_into_shards(atlas, tmp_path):
    from tfx.artifacts import shard_from_census
    from tfx.data.shards import read_shard

    adata = atlas["adata"].copy()
    adata.var = adata.var.rename(columns={"ensembl_id": "feature_id"})
    adata.obs_names = [str(i) for i in range(adata.n_obs)]  # the Census names cells by soma_joinid
    uri = tiledbsoma.io.from_anndata(str(tmp_path / "census" / SPECIES), adata, measurement_name="RNA",
                                     X_layer_name="raw")
    client = StandInCensus({SPECIES: uri})
    summary = shard_from_census(client, ["synth alpha"], tmp_path / "out", cells_per_shard=50, processes=1)
    primary = adata.obs.query("is_primary_data == True")
    assert client.asked == [SPECIES] and summary["species"][SPECIES]["cells"] == len(primary)
    shard_dir = tmp_path / "out" / "shards" / SPECIES / "census"
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    ids, x = [], adata.X.tocsr()
    genes = np.asarray(adata.var["feature_id"])
    for shard in manifest["shards"]:
        header, *cells = read_shard(str(shard_dir / shard["name"]))
        for g, counts, meta in cells:
            row = int(meta["id"])
            ids.append(meta["id"])
            np.testing.assert_array_equal(np.asarray(header["genes"])[g], genes[x[row].indices])
            np.testing.assert_array_equal(counts, x[row].data)
    assert ids == list(primary.index)

    lung = shard_from_census(client, [SPECIES], tmp_path / "lung", obs_filter=LUNG, processes=1)
    assert lung["species"][SPECIES]["cells"] == len(adata.obs.query(LUNG))
