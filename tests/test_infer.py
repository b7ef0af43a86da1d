"""`tfx infer` on real-world files: layers, gene columns, bad input, streaming, atomic output."""

from __future__ import annotations

import logging

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata.io import write_elem

import reference
from conftest import write_h5ad
from tfx.checkpoint import load_checkpoint
from tfx.cli import main

GENES = [f"ENSSYN{i:011d}" for i in range(300)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return reference.build_reference_checkpoint(tmp_path_factory.mktemp("infer") / "ckpt",
                                                {"synthetic": GENES[:250]}, seq_len=63, seed=1)


def _counts(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, len(GENES))) < 0.2) * rng.integers(1, 50, size=(n, len(GENES)))
    x[3] = 0  # a cell without any expressed gene
    return x.astype(np.float32)


def _obs(n):
    return pd.DataFrame({"assay": ["10x 3' v3"] * n, "cell_type": ["t"] * n}, index=[f"c{i}" for i in range(n)])


def _run(ckpt, data, out, *extra):
    return main(["infer", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out), "--device", "cpu",
                 *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line
    return err[0]


def test_streamed_chunks_equal_one_pass_and_empty_cells_are_kept(ckpt, tmp_path, caplog):
    data = write_h5ad(tmp_path / "in.h5ad", GENES, _counts(), _obs(40))
    with caplog.at_level(logging.WARNING):
        assert _run(ckpt, data, tmp_path / "a.h5ad", "--outputs", "embeddings,llh") == 0
    assert "1 of 40 cells have no expressed gene" in caplog.text
    assert _run(ckpt, data, tmp_path / "b.h5ad", "--outputs", "embeddings,llh", "--chunk-size", "7",
                "--token-budget", "200") == 0
    a, b = anndata.read_h5ad(tmp_path / "a.h5ad"), anndata.read_h5ad(tmp_path / "b.h5ad")
    assert a.n_obs == 40 and np.isnan(a.obs["llh"].iloc[3])
    np.testing.assert_allclose(a.obsm["embeddings"], b.obsm["embeddings"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.obs["llh"], b.obs["llh"], rtol=1e-5)


def test_the_inputs_obs_columns_reach_the_output_whatever_their_dtype(ckpt, tmp_path):
    """Nullable strings, integers and booleans (anndata >= 0.11 writes them) pass through to the output."""
    donor = pd.array(["d1", None] * 20, dtype="string")
    obs = _obs(40).assign(donor=donor, age=pd.array([30, None] * 20, dtype="Int64"),
                          sorted=pd.array([True, None] * 20, dtype="boolean"))
    data = write_h5ad(tmp_path / "in.h5ad", GENES, _counts(), obs)
    with h5py.File(data, "a") as f, anndata.settings.override(allow_write_nullable_strings=True):
        del f["obs/donor"]  # write_h5ad stores strings as categories; other writers keep them strings
        write_elem(f["obs"], "donor", donor)
    assert _run(ckpt, data, tmp_path / "out.h5ad") == 0
    out = anndata.read_h5ad(tmp_path / "out.h5ad").obs
    pd.testing.assert_frame_equal(out[obs.columns], anndata.read_h5ad(data).obs[obs.columns])


def test_raw_layer_gene_index_and_versions(ckpt, tmp_path):
    x = _counts()
    plain = write_h5ad(tmp_path / "plain.h5ad", GENES, x, _obs(40))
    # normalised X, raw counts in .raw, versioned ids in the var index only
    var = pd.DataFrame(index=[f"{g}.{i % 3 + 1}" for i, g in enumerate(GENES)])
    adata = anndata.AnnData(X=sp.csr_matrix(np.log1p(x)), obs=_obs(40), var=var)
    adata.raw = anndata.AnnData(X=sp.csr_matrix(x), var=var)
    adata.write_h5ad(tmp_path / "raw.h5ad")
    assert _run(ckpt, plain, tmp_path / "p.h5ad") == 0
    assert _run(ckpt, tmp_path / "raw.h5ad", tmp_path / "r.h5ad", "--gene-col", "index") == 0
    np.testing.assert_array_equal(anndata.read_h5ad(tmp_path / "p.h5ad").obsm["embeddings"],
                                  anndata.read_h5ad(tmp_path / "r.h5ad").obsm["embeddings"])


def test_missing_assay_column_uses_unknown_token(ckpt, tmp_path, caplog):
    x = _counts()
    no_assay = write_h5ad(tmp_path / "na.h5ad", GENES, x)
    unknown = write_h5ad(tmp_path / "unk.h5ad", GENES, x, _obs(40).assign(assay="never seen"))
    with caplog.at_level(logging.WARNING):
        assert _run(ckpt, no_assay, tmp_path / "a.h5ad") == 0
    assert "no 'assay' column" in caplog.text
    assert _run(ckpt, unknown, tmp_path / "b.h5ad") == 0
    np.testing.assert_array_equal(anndata.read_h5ad(tmp_path / "a.h5ad").obsm["embeddings"],
                                  anndata.read_h5ad(tmp_path / "b.h5ad").obsm["embeddings"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_h5ad(p, [f"OTHER{i}" for i in range(300)], _counts()), "none of the 300 genes"),
        (lambda p: write_h5ad(p, GENES[:299] + [GENES[0] + ".2"], _counts()), "duplicate genes"),
        (lambda p: write_h5ad(p, GENES, np.where(_counts() > 40, np.nan, _counts())), "NaN"),
        (lambda p: write_h5ad(p, GENES, -_counts()), "negative"),
        (lambda p: write_h5ad(p, GENES, np.zeros((0, len(GENES)))), "it holds no cell; nothing to embed"),
    ],
    ids=["no-vocab-gene", "duplicates", "nan", "negative", "no-cell"],
)
def test_bad_input_gets_one_line_error_and_keeps_old_output(ckpt, tmp_path, capsys, make, message):
    out = write_h5ad(tmp_path / "out.h5ad", GENES[:3], np.ones((2, 3)))  # a previous result, replaceable
    previous = out.read_bytes()
    data = make(tmp_path / "bad.h5ad")
    assert _run(ckpt, data, out, "--overwrite") == 2
    line = _error(capsys)
    assert message in line and "bad.h5ad" in line
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5ad", "out.h5ad"]  # no temporary left


def test_missing_gene_column_names_the_fix(ckpt, tmp_path, capsys):
    data = write_h5ad(tmp_path / "in.h5ad", GENES, _counts())
    assert _run(ckpt, data, tmp_path / "o.h5ad", "--gene-col", "gene_ids") == 2
    line = _error(capsys)
    assert "no gene column 'gene_ids'" in line and "--gene-col" in line


@pytest.mark.parametrize("extra, message", [
    (("--model-type", "esm2ce", "--outputs", "embeddings,llh"), "--model-type esm2ce has no transformer and no heads, so no llh"),
    (("--embedding-layer-index", "2"), "--embedding-layer-index 2: the checkpoint has 2 layers; use -2 to 1"),
    (("--embedding-layer-index", "-3"), "--embedding-layer-index -3: the checkpoint has 2 layers"),
    (("--embedding-layer-index", "0", "--outputs", "embeddings,llh"), "applies to the transformer's embeddings only"),
])
def test_model_type_and_layer_refusals_are_one_line(ckpt, tmp_path, capsys, extra, message):
    data = write_h5ad(tmp_path / "in.h5ad", GENES, _counts(8))
    assert _run(ckpt, data, tmp_path / "o.h5ad", *extra) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "o.h5ad").exists()


def test_last_layer_index_is_the_default_and_esm2ce_cge_is_each_genes_protein_embedding(ckpt, tmp_path):
    data = write_h5ad(tmp_path / "in.h5ad", GENES, _counts(12))
    assert _run(ckpt, data, tmp_path / "a.h5ad") == 0
    last = load_checkpoint(ckpt).model_cfg.num_layers - 1  # the last layer by its positive index
    assert _run(ckpt, data, tmp_path / "b.h5ad", "--embedding-layer-index", str(last)) == 0
    np.testing.assert_array_equal(anndata.read_h5ad(tmp_path / "a.h5ad").obsm["embeddings"],
                                  anndata.read_h5ad(tmp_path / "b.h5ad").obsm["embeddings"])
    assert _run(ckpt, data, tmp_path / "cge.h5ad", "--model-type", "esm2ce", "--emb-type", "cge") == 0
    assert _run(ckpt, data, tmp_path / "cell.h5ad", "--model-type", "esm2ce") == 0
    cge, cell = anndata.read_h5ad(tmp_path / "cge.h5ad"), anndata.read_h5ad(tmp_path / "cell.h5ad")
    table = dict(zip(*_gene_table(ckpt / "vocabs" / "synthetic_gene.h5")))
    np.testing.assert_allclose(cge.uns["cge_embeddings"], [table[g] for g in cge.uns["cge_gene_names"]], rtol=1e-6)
    # a cell's esm2ce embedding is its genes' sum over seq_len (63): the reference's pooling
    cells = cge.uns["cge_cell_indices"]
    sums = np.stack([cge.uns["cge_embeddings"][cells == i].sum(0) for i in range(12)]) / 63
    np.testing.assert_allclose(cell.obsm["embeddings"], sums, rtol=1e-5, atol=1e-7)


def _gene_table(path):
    import h5py

    with h5py.File(path) as f:
        keys = [k.decode() if isinstance(k, bytes) else k for k in f["keys"][:]]
        return keys, [f["arrays"][k][:] for k in keys]


def test_duplicates_can_be_dropped(ckpt, tmp_path, caplog):
    """The second column of a gene (ids equal once versions are stripped) is dropped, the first read."""
    counts = _counts()
    counts[:, 299] = 7.0  # a duplicate of GENES[0] with counts of its own: read, it would change the embeddings
    data = write_h5ad(tmp_path / "in.h5ad", GENES[:299] + [GENES[0] + ".2"], counts)
    without = write_h5ad(tmp_path / "without.h5ad", GENES[:299], counts[:, :299])
    with caplog.at_level(logging.WARNING):
        assert _run(ckpt, data, tmp_path / "o.h5ad", "--remove-duplicate-genes") == 0
    assert "dropped 1 duplicate genes" in caplog.text
    assert _run(ckpt, without, tmp_path / "w.h5ad") == 0
    np.testing.assert_array_equal(anndata.read_h5ad(tmp_path / "o.h5ad").obsm["embeddings"],
                                  anndata.read_h5ad(tmp_path / "w.h5ad").obsm["embeddings"])


def test_normalised_values_warn(ckpt, tmp_path, caplog):
    data = write_h5ad(tmp_path / "in.h5ad", GENES, np.log1p(_counts()))
    with caplog.at_level(logging.WARNING):
        assert _run(ckpt, data, tmp_path / "o.h5ad") == 0
    assert "non-integer values" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("emb_type", ["cell", "cge"])
def test_one_process_per_device_equals_one_process(ckpt, tmp_path, emb_type):
    """--devices N splits the rows over N processes (one per GPU; CPU processes here)."""
    data = write_h5ad(tmp_path / "in.h5ad", GENES, _counts(), _obs(40))
    args = ["--outputs", "embeddings,llh", "--emb-type", emb_type, "--chunk-size", "9"]
    assert _run(ckpt, data, tmp_path / "one.h5ad", *args) == 0
    assert _run(ckpt, data, tmp_path / "two.h5ad", *args, "--devices", "2") == 0
    one, two = anndata.read_h5ad(tmp_path / "one.h5ad"), anndata.read_h5ad(tmp_path / "two.h5ad")
    # float results to 1e-4: a worker process's CPU kernels may split reductions differently (MKL
    # picks its threads by load), so bitwise equality across processes is not promised; per-gene
    # embeddings of a few cells have differed by 3.5e-5 (a clean-clone CI run), while a row or gene
    # out of place differs by O(1), and the ids and names above must match exactly
    close = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one.obs["llh"], two.obs["llh"], **close)
    for key in ("cge_cell_indices", "cge_gene_names") if emb_type == "cge" else ():
        np.testing.assert_array_equal(one.uns[key], two.uns[key])
    if emb_type == "cge":
        np.testing.assert_allclose(one.uns["cge_embeddings"], two.uns["cge_embeddings"], **close)
    if emb_type == "cell":
        np.testing.assert_allclose(one.obsm["embeddings"], two.obsm["embeddings"], **close)
