"""The notebook API: tfx.load / tfx.embed / tfx.evaluate on in-memory AnnData give `tfx infer`'s
and `tfx eval`'s numbers, and scanpy reads the result."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest

import reference
import tfx
from conftest import write_h5ad
from tfx.cli import main
from tfx.errors import InputError

GENES = [f"ENSSYN{i:011d}" for i in range(200)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return reference.build_reference_checkpoint(tmp_path_factory.mktemp("api") / "ckpt",
                                                {"synthetic": GENES[:170]}, seq_len=47, seed=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 60
    x = (rng.random((n, len(GENES))) < 0.15) * rng.integers(1, 40, size=(n, len(GENES)))
    x[5] = 0  # a cell without any expressed gene
    obs = pd.DataFrame({"assay": ["10x 3' v3", "MERFISH"] * (n // 2), "cell_type": ["a", "b", "c"] * (n // 3),
                        "species": ["x"] * (n // 2) + ["y"] * (n // 2)}, index=[f"c{i}" for i in range(n)])
    return write_h5ad(tmp_path_factory.mktemp("api_data") / "in.h5ad", GENES, x.astype(np.float32), obs)


def _infer(ckpt, data, out, *extra):
    assert main(["infer", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out), "--device", "cpu",
                 *extra]) == 0
    return anndata.read_h5ad(out)


def test_embed_equals_tfx_infer(ckpt, data, tmp_path, caplog):
    cli = _infer(ckpt, data, tmp_path / "cli.h5ad", "--outputs", "embeddings,llh,gene_llh", "--batch-size", "16")
    adata = anndata.read_h5ad(data)
    model = tfx.load(ckpt)
    caplog.clear()
    assert tfx.embed(adata, model, key="X_tfx", outputs=("embeddings", "llh", "gene_llh"), batch_size=16,
                     device="cpu") is adata
    assert "AnnData: 1 of 60 cells have no expressed gene in the vocabulary; kept" in caplog.text  # as tfx infer warns
    assert adata.obsm["X_tfx"].dtype == np.float32
    np.testing.assert_array_equal(adata.obsm["X_tfx"], cli.obsm["embeddings"])
    np.testing.assert_array_equal(adata.obs["llh"].to_numpy(), cli.obs["llh"].to_numpy())  # NaN for cell 5 in both
    np.testing.assert_array_equal(adata.obsm["gene_llh"], cli.obsm["gene_llh"])
    np.testing.assert_array_equal(adata.obs["gene_llh"].to_numpy(), cli.obs["gene_llh"].to_numpy())
    # contextual gene embeddings and the ESM2-CE baseline through the same engine
    cge = _infer(ckpt, data, tmp_path / "cge.h5ad", "--emb-type", "cge")
    tfx.embed(adata, model, emb_type="cge", device="cpu")
    for key in ("cge_embeddings", "cge_cell_indices", "cge_gene_names"):
        np.testing.assert_array_equal(adata.uns[key], cge.uns[key])
    esm = _infer(ckpt, data, tmp_path / "esm.h5ad", "--model-type", "esm2ce")
    np.testing.assert_array_equal(tfx.embed(adata, model, key="X_esm2ce", model_type="esm2ce").obsm["X_esm2ce"],
                                  esm.obsm["embeddings"])


@pytest.mark.slow
def test_evaluate_equals_tfx_eval_and_scanpy_reads_the_embeddings(ckpt, data, tmp_path):
    import scanpy as sc

    _infer(ckpt, data, tmp_path / "emb.h5ad")
    assert main(["eval", "--embeddings", str(tmp_path / "emb.h5ad"), "--counts", str(data), "--label", "cell_type",
                 "--batch", "species", "--no-cz-benchmarks", "--maps", "pca", "--output", str(tmp_path / "report")]) == 0
    cli = json.loads((tmp_path / "report" / "report.json").read_text())
    assert cli["plots"] == ["pca_cell_type.png", "pca_species.png"]
    adata = tfx.embed(anndata.read_h5ad(data), tfx.load(ckpt), device="cpu")
    report = tfx.evaluate(adata, rep="X_tfx", label="cell_type", batch="species", counts="X", cz_benchmarks=False)
    assert report["representations"] == cli["representations"]
    assert report["headline"] == cli["headline"] and report["cells"] == cli["cells"]
    assert report["plots"] == [] and report["inputs"]["rep"] == "X_tfx"
    sc.pp.neighbors(adata, use_rep="X_tfx", n_neighbors=5)
    assert adata.obsp["connectivities"].shape == (60, 60) and adata.uns["neighbors"]["params"]["use_rep"] == "X_tfx"


def test_api_refusals_name_the_argument(ckpt, data, tmp_path):
    adata = anndata.read_h5ad(data)
    model = tfx.load(ckpt)
    with pytest.raises(InputError, match=r"^rep: adata.obsm has no 'X_tfx' .*run tfx.embed"):
        tfx.evaluate(adata, rep="X_tfx")
    with pytest.raises(InputError, match=r"^outputs: lhh is not a comma list of embeddings, llh, gene_llh, nll"):
        tfx.embed(adata, model, outputs=("embeddings", "lhh"))
    with pytest.raises(InputError, match=r"^--model-type esm2ce has no transformer"):
        tfx.embed(adata, model, model_type="esm2ce", outputs=("llh",))
    for key in ("", "a/b", "X_tfx\n"):
        with pytest.raises(InputError, match=rf"^key: {re.escape(repr(key))} is not a name for the obsm key"):
            tfx.embed(adata, model, key=key)
    with pytest.raises(InputError, match=r"^AnnData: var has no gene column 'gene_ids'"):
        tfx.embed(adata, model, gene_col="gene_ids")
    adata.obsm["X_tfx"] = np.zeros((adata.n_obs, 4), np.float32)
    with pytest.raises(InputError, match=r"^overwrite: 'no' is not True or False"):
        tfx.evaluate(adata, overwrite="no")
    with pytest.raises(InputError, match=r"^label: adata.obs has no column 'celltype'"):
        tfx.evaluate(adata, label="celltype")
    with pytest.raises(InputError, match=r"^compare: 'X_pca' is not in adata.obsm; pass other obsm keys \(none\)"):
        tfx.evaluate(adata, compare=["X_pca"])
    adata.obsm["X_b"] = adata.obsm["X_tfx"]
    with pytest.raises(InputError, match=r"^compare: \['X_b', 'X_b'\] names a key twice"):
        tfx.evaluate(adata, compare=["X_b", "X_b"])
    (tmp_path / "report").write_text("kept")
    with pytest.raises(InputError, match=r"^output_dir .*report: exists and is not a directory"):
        tfx.evaluate(adata, output_dir=tmp_path / "report")
    assert (tmp_path / "report").read_text() == "kept"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("kept")
    with pytest.raises(InputError, match=r"^output_dir .*full: is not empty; pass overwrite=True to replace"):
        tfx.evaluate(adata, output_dir=tmp_path / "full")
    # arguments of the wrong type: one InputError naming the argument, not a TypeError from inside
    with pytest.raises(InputError, match=r"^output_dir: expected a directory path, got int"):
        tfx.evaluate(adata, output_dir=123)
    with pytest.raises(InputError, match=r"^compare: expected obsm keys \(a string or a list of them\), got 5"):
        tfx.evaluate(adata, compare=5)
    adata.obsm["X_tfx"] = adata.obsm["X_tfx"].astype(object)
    with pytest.raises(InputError, match=r"^adata.obsm\['X_tfx'\] holds object values, not real numbers"):
        tfx.evaluate(adata)


@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
def test_import_tfx_stays_light():
    code = ("import sys, tfx; heavy = sorted(m for m in ('torch', 'anndata', 'sklearn', 'tfx.api') if m in sys.modules); "
            "print('HEAVY', heavy); assert callable(tfx.embed) and 'tfx.api' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout


def test_eval_with_the_checkpoint_scores_esm2ce_as_tfx_infer_computes_it(ckpt, data, tmp_path):
    """tfx eval --checkpoint puts the ESM2-CE baseline beside the embeddings: the figures of
    `tfx infer --model-type esm2ce`'s output scored alone, on the same cells."""
    _infer(ckpt, data, tmp_path / "emb.h5ad")
    _infer(ckpt, data, tmp_path / "esm.h5ad", "--model-type", "esm2ce")
    assert main(["eval", "--embeddings", str(tmp_path / "emb.h5ad"), "--counts", str(data), "--checkpoint", str(ckpt),
                 "--label", "cell_type", "--no-cz-benchmarks", "--maps", "none", "--output", str(tmp_path / "with")]) == 0
    adata = anndata.read_h5ad(tmp_path / "esm.h5ad")
    alone = tfx.evaluate(adata, rep="embeddings", label="cell_type", cz_benchmarks=False)
    report = json.loads((tmp_path / "with" / "report.json").read_text())
    assert report["representations"]["esm2ce"] == alone["representations"]["embeddings"]
    assert report["headline"]["esm2ce_knn_macro_f1"] == alone["headline"]["knn_macro_f1"]
    assert "ESM2-CE" in (tmp_path / "with" / "summary.md").read_text()
    assert report["plots"] == [] and not list((tmp_path / "with").glob("*.png"))  # --maps none
    # tfx.evaluate computes the same baseline from the counts in memory
    model = tfx.load(ckpt)
    cells = tfx.embed(anndata.read_h5ad(data), model, device="cpu")
    api = tfx.evaluate(cells, label="cell_type", counts="X", model=model, cz_benchmarks=False)
    assert api["representations"]["esm2ce"] == report["representations"]["esm2ce"]
    assert api["headline"]["esm2ce_knn_macro_f1"] == report["headline"]["esm2ce_knn_macro_f1"]


def test_eval_checkpoint_without_counts_is_one_line(ckpt, data, tmp_path, capsys):
    assert main(["eval", "--embeddings", str(tmp_path / "emb.h5ad"), "--checkpoint", str(ckpt), "--label", "cell_type",
                 "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint: the ESM2-CE baseline is computed from the cells' counts; pass --counts" in err[0]
    missing = tmp_path / "missing.h5ad"
    assert main(["eval", "--embeddings", str(tmp_path / "emb.h5ad"), "--checkpoint", str(ckpt), "--counts", str(missing),
                 "--label", "cell_type", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{missing}: no such file" in err[0]
    # counts of genes the checkpoint lacks: the baseline's error names the counts file
    _infer(ckpt, data, tmp_path / "emb.h5ad")
    cells = anndata.read_h5ad(data)
    foreign = write_h5ad(tmp_path / "foreign.h5ad", [f"ENSOTHER{i:09d}" for i in range(len(GENES))], cells.X.toarray(),
                         cells.obs)
    assert main(["eval", "--embeddings", str(tmp_path / "emb.h5ad"), "--checkpoint", str(ckpt), "--counts", str(foreign),
                 "--label", "cell_type", "--no-cz-benchmarks", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{foreign}: none of the" in err[-1], err
