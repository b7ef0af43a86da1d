"""The synthetic atlas: deterministic, realistically shaped, and carrying cell-type signal across species."""

from __future__ import annotations

import re

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tfx.eval.inputs import pca_of_log_counts
from tfx.eval.probes import label_prediction
from tfx.model.config import SPECIAL_TOKENS
from tfx.registry import SPECIES
from tfx.synth import ASSAY_DEPTH, CELL_TYPES, SPECIES_NAMES, synth_atlas
from tfx.vocab import GeneVocab, read_gene_embeddings

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> dict:
    """The default atlas, as `tfx synth` writes it."""
    summary = synth_atlas(tmp_path_factory.mktemp("atlas"))
    data = {name: anndata.read_h5ad(s["h5ad"]) for name, s in summary["species"].items()}
    return {"summary": summary, "data": data}


def small(path, seed: int, species: int = 2) -> dict:
    return synth_atlas(path, species=species, cells=80, genes=200, seed=seed)


def files_of(summary: dict, name: str) -> tuple[anndata.AnnData, np.ndarray]:
    s = summary["species"][name]
    return anndata.read_h5ad(s["h5ad"]), read_gene_embeddings(s["gene_h5"])[1]


def same(a: tuple[anndata.AnnData, np.ndarray], b: tuple[anndata.AnnData, np.ndarray]) -> bool:
    (x, ex), (y, ey) = a, b
    return (x.X.toarray().tobytes() == y.X.toarray().tobytes() and ex.tobytes() == ey.tobytes()
            and x.obs.equals(y.obs) and x.var.equals(y.var))


def test_deterministic_for_a_seed_and_different_for_another(tmp_path):
    first, again, other = small(tmp_path / "a", 0), small(tmp_path / "b", 0), small(tmp_path / "c", 1)
    more_species = small(tmp_path / "d", 0, species=3)
    for name in SPECIES_NAMES[:2]:
        assert same(files_of(first, name), files_of(again, name))
        assert not same(files_of(first, name), files_of(other, name))
        # each species has its own seed stream: adding a species leaves the others as they were
        assert same(files_of(first, name), files_of(more_species, name))


def test_h5ad_files_hold_raw_counts_and_the_obs_and_var_that_tfx_reads(atlas):
    ids_seen = set()
    assert set(atlas["data"]) == set(SPECIES_NAMES[:3])
    for name, adata in atlas["data"].items():
        assert adata.n_obs == 600 and sp.issparse(adata.X)
        counts = adata.X.data
        assert (counts > 0).all() and np.array_equal(counts, np.round(counts))
        assert counts.max() > 30  # above the tokenizer's clip, as real counts are
        assert set(adata.obs["species"]) == {name}
        assert set(adata.obs["cell_type"]) == set(CELL_TYPES)
        assert set(adata.obs["assay"]) <= set(ASSAY_DEPTH) and len(set(adata.obs["assay"])) >= 2
        ids = adata.var["ensembl_id"].astype(str)
        assert all(re.fullmatch(r"ENSSYN[A-Z]\d{11}", g) for g in ids) and ids.is_unique
        assert ids_seen.isdisjoint(ids)
        ids_seen |= set(ids)


def test_cells_express_from_tens_to_hundreds_of_genes(atlas):
    per_cell = np.concatenate([np.diff(a.X.indptr) for a in atlas["data"].values()])
    low, median, high = np.percentile(per_cell, [1, 50, 99])
    assert per_cell.min() >= 5 and low < 60 and 120 < median < 350 and high > 450
    totals = np.concatenate([np.asarray(a.X.sum(axis=1)).ravel() for a in atlas["data"].values()])
    assert np.percentile(totals, 95) / np.percentile(totals, 5) > 10  # library sizes vary widely


def marker_genes(adata: anndata.AnnData, cell_type: str) -> int:
    """Genes detected in over half of a type's cells and under a tenth of the other cells."""
    detected = (adata.X > 0).tocsr()
    mine = (adata.obs["cell_type"] == cell_type).to_numpy()
    inside, outside = (np.asarray(detected[m].mean(axis=0)).ravel() for m in (mine, ~mine))
    return int(((inside > 0.5) & (outside < 0.1)).sum())


def test_every_cell_type_has_marker_genes_as_real_types_do(atlas):
    """Real mouse types (../shared/data/mouse_val.h5ad) have 0 to 14 such markers, median 7."""
    per_type = [marker_genes(adata, t) for adata in atlas["data"].values() for t in CELL_TYPES]
    assert min(per_type) >= 2 and 5 <= np.median(per_type) <= 20


def test_gene_files_build_a_vocabulary_with_every_species(atlas):
    summary = atlas["summary"]
    files = [s["gene_h5"] for s in summary["species"].values()]
    vocab, table = GeneVocab.from_files(SPECIAL_TOKENS, files)
    n_genes = sum(a.n_vars for a in atlas["data"].values())
    assert len(vocab) == len(SPECIAL_TOKENS) + n_genes
    assert table.shape == (len(vocab), summary["embedding_dim"])
    for name, adata in atlas["data"].items():
        assert (vocab.lookup(list(adata.var["ensembl_id"])) >= 0).all()
        assert SPECIES.get(name).gene_file == f"{name}_gene.h5"


def test_ortholog_embeddings_are_closer_than_random_pairs(atlas):
    def by_group(name):
        genes, table = read_gene_embeddings(atlas["summary"]["species"][name]["gene_h5"])
        group = atlas["data"][name].var.set_index("ensembl_id").loc[genes, "ortholog_group"]
        return pd.DataFrame(table, index=group.to_numpy())

    a, b = by_group("synth_alpha"), by_group("synth_beta")
    shared = sorted(set(a.index) - {""})
    assert 0.5 < len(shared) / len(a) < 1  # orthologs and species-specific genes
    ortholog = np.linalg.norm(a.loc[shared].to_numpy() - b.loc[shared].to_numpy(), axis=1)
    shuffled = np.random.default_rng(0).permutation(len(shared))
    random = np.linalg.norm(a.loc[shared].to_numpy() - b.loc[shared].to_numpy()[shuffled], axis=1)
    assert np.median(ortholog) < 0.5 * np.median(random)


def test_pca_of_log_counts_separates_cell_types(atlas):
    """The baseline a model must reach, computed as `tfx eval` computes it on all species at once."""
    data = list(atlas["data"].values())
    counts = sp.block_diag([a.X for a in data]).tocsr()  # species share no gene ids
    labels = np.concatenate([a.obs["cell_type"].astype(str) for a in data])
    scores = label_prediction(pca_of_log_counts(counts), labels)
    assert scores["knn"]["macro_f1"] > 0.85 and scores["logistic"]["macro_f1"] > 0.85


def test_cell_types_transfer_across_species_through_orthologs(atlas):
    """An ideal cross-species model (one that aligns orthologs) can label one species from another."""
    def log_orthologs(adata):
        keep = (adata.var["ortholog_group"] != "").to_numpy()
        x = adata.X[:, keep].toarray()
        frame = pd.DataFrame(np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4),
                             columns=adata.var["ortholog_group"][keep])
        return frame.sort_index(axis=1).to_numpy()

    alpha, beta = atlas["data"]["synth_alpha"], atlas["data"]["synth_beta"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    predicted = clf.fit(log_orthologs(alpha), alpha.obs["cell_type"].astype(str)).predict(log_orthologs(beta))
    assert np.mean(predicted == beta.obs["cell_type"].astype(str).to_numpy()) > 0.75


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--species"):
        synth_atlas(tmp_path, species=len(SPECIES_NAMES) + 1)
    assert not any(tmp_path.iterdir())


def test_the_true_marker_programmes_are_written_and_expressed_in_their_types(atlas):
    """uns["marker_programmes"]: each type's genes, detected far more often in that type's cells."""
    for adata in atlas["data"].values():
        programmes = adata.uns["marker_programmes"]
        assert set(programmes) == set(CELL_TYPES)
        detected = (adata.X > 0).tocsr()
        column = {g: i for i, g in enumerate(adata.var["ensembl_id"])}
        for cell_type, genes in programmes.items():
            cols = [column[g] for g in genes]
            assert len(cols) >= 6
            mine = (adata.obs["cell_type"] == cell_type).to_numpy()
            inside, outside = (detected[m][:, cols].mean() for m in (mine, ~mine))
            assert inside > 0.35 and inside > 3 * outside, (cell_type, inside, outside)
