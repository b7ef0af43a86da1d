"""Reading what `tfx eval` scores: embeddings and labels, and optionally the counts of the same cells.

Several embeddings files (one per species, as `tfx infer` writes them) are stacked in order; the
counts files, when given, pair with them one to one and must hold the same cells.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem
from sklearn.decomposition import PCA

from tfx.data.anndata import CellReader
from tfx.errors import InputError

EMBEDDINGS_KEY = "embeddings"


@dataclass
class EvalCells:
    embeddings: np.ndarray  # cells x dim, float32
    obs: pd.DataFrame  # the obs of every file, stacked
    counts: sp.csr_matrix | None  # cells x union of genes, in the embeddings' cell order
    sources: list[str]  # the embeddings file of each cell
    genes: np.ndarray | None = None  # the gene id of each column of counts
    file_genes: list[np.ndarray] | None = None  # each counts file's gene ids


def load_cells(embeddings_paths: list[str | os.PathLike], columns: list[str],
               counts_paths: list[str | os.PathLike] | None = None) -> EvalCells:
    if counts_paths and len(counts_paths) != len(embeddings_paths):
        raise InputError(f"{len(embeddings_paths)} embeddings files but {len(counts_paths)} counts files; "
                         "give one --counts file per --embeddings file, in the same order")
    embeddings, obs, sources = [], [], []
    for path in map(Path, embeddings_paths):
        emb, file_obs = _read_embeddings(path, columns)
        embeddings.append(emb)
        obs.append(file_obs)
        sources += [str(path)] * len(file_obs)
    counts = genes = file_genes = None
    if counts_paths:
        parts = [_read_counts(Path(c), Path(e), o.index) for c, e, o in zip(counts_paths, embeddings_paths, obs)]
        counts, genes = _stack_counts(parts)
        file_genes = [g for _, g in parts]
    return EvalCells(np.concatenate(embeddings), pd.concat(obs), counts, sources, genes, file_genes)


def read_aligned(path: str | os.PathLike, cells: pd.Index) -> np.ndarray:
    """obsm["embeddings"] of another `tfx infer` output of the same cells, in ``cells``' order."""
    emb, obs = _read_embeddings(Path(path), [])
    if not cells.is_unique or not obs.index.is_unique or set(cells) != set(obs.index):
        missing = next((c for c in cells if c not in obs.index), None)
        raise InputError(f"{path}: its {len(obs)} cells are not the {len(cells)} cells of --embeddings"
                         + (f" (e.g. '{missing}' is missing)" if missing is not None else "")
                         + "; --compare needs embeddings of the same cells, with unique cell names")
    return emb[obs.index.get_indexer(cells)]


def check_embeddings(emb: np.ndarray, n_cells: int, where: str) -> None:
    """Embeddings that can be scored: cells x at least one dimension, every value finite; else one
    line naming ``where`` (a file's obsm key, or adata.obsm['key'] in tfx.evaluate)."""
    if emb.ndim != 2 or len(emb) != n_cells or not emb.shape[1]:
        raise InputError(f"{where} has shape {emb.shape} for {n_cells} cells; rewrite it with `tfx infer`")
    if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
        raise InputError(f"{where} holds {emb.dtype} values, not real numbers; rewrite it with `tfx infer`")
    if not np.isfinite(emb).all():
        raise InputError(f"{where} holds NaN or infinite values; rerun `tfx infer` (check --precision) or drop "
                         "those cells")


def _read_embeddings(path: Path, columns: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """obsm["embeddings"] and obs only: the file may also hold a large X that eval does not need."""
    if not path.exists():
        raise InputError(f"{path}: no such file; pass the h5ad written by `tfx infer`")
    try:
        with h5py.File(path, "r") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's notes on older encodings
            if f"obsm/{EMBEDDINGS_KEY}" not in f:
                raise InputError(f"{path}: no obsm['{EMBEDDINGS_KEY}']; make it with "
                                 "`tfx infer --emb-type cell --outputs embeddings`")
            emb = np.asarray(read_elem(f[f"obsm/{EMBEDDINGS_KEY}"]), dtype=np.float32)
            obs = read_elem(f["obs"])
    except OSError as err:
        raise InputError(f"{path}: not a readable h5ad file ({err})") from err
    check_embeddings(emb, len(obs), f"{path}: obsm['{EMBEDDINGS_KEY}']")
    for col in columns:
        if col not in obs.columns:
            known = ", ".join(map(str, obs.columns[:12])) or "none"
            raise InputError(f"{path}: obs has no column '{col}' (columns: {known}); "
                             "pass --label/--batch with one of those")
    return emb, obs


def _read_counts(path: Path, embeddings_path: Path, cells: pd.Index) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts reordered to the embeddings' cells, and their gene ids."""
    if not path.exists():
        raise InputError(f"{path}: no such file; pass the h5ad of counts given to `tfx infer`")
    reader = CellReader(path, gene_col=_gene_col(path), remove_duplicate_genes=True)
    try:
        names = reader.read_obs([]).index
        if not cells.is_unique or not names.is_unique or set(cells) != set(names):
            missing = next((c for c in cells if c not in names), None)
            raise InputError(
                f"{path}: its {len(names)} cells do not match the {len(cells)} cells of {embeddings_path}"
                + (f" (e.g. '{missing}' is missing)" if missing is not None else "")
                + "; pass the same h5ad that `tfx infer` read, with unique cell names"
            )
        counts = reader.read_rows(0, reader.n_cells)
        reader.check_values(counts.data, 0)
    finally:
        reader.close()
    kept = np.flatnonzero(reader.column_ids >= 0)  # duplicate genes: the first kept, as tfx infer reads them
    return counts[names.get_indexer(cells)][:, kept], np.asarray(reader.genes[kept], dtype=str)


def _gene_col(path: Path) -> str:
    """The gene ids eval pairs across files: var['ensembl_id'] where the file has it, else the index."""
    try:
        with h5py.File(path, "r") as f:
            var = f["raw/var"] if "raw/var" in f else f["var"]
            return "ensembl_id" if "ensembl_id" in var else "index"
    except (OSError, KeyError):
        return "ensembl_id"  # not an h5ad: the reader names the file


def _stack_counts(parts: list[tuple[sp.csr_matrix, np.ndarray]]) -> tuple[sp.csr_matrix, np.ndarray]:
    """Stack per-file counts over the union of their genes (species share no gene ids); the union's ids."""
    union = pd.Index(pd.unique(np.concatenate([genes for _, genes in parts])))
    blocks = []
    for X, genes in parts:
        coo = X.tocoo()
        cols = union.get_indexer(genes)[coo.col]
        blocks.append(sp.csr_matrix((coo.data, (coo.row, cols)), shape=(X.shape[0], len(union))))
    return sp.vstack(blocks).tocsr(), union.to_numpy()


def pca_of_log_counts(counts: sp.csr_matrix, n_components: int = 50, n_genes: int = 2000,
                      seed: int = 0) -> np.ndarray:
    """The standard baseline: log1p of counts per 10k, the most variable genes, PCA."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scaled = sp.diags(1e4 / np.maximum(totals, 1)) @ counts
    logged = scaled.log1p().tocsc()
    mean = np.asarray(logged.mean(axis=0)).ravel()
    variance = np.asarray(logged.multiply(logged).mean(axis=0)).ravel() - mean**2
    top = np.sort(np.argsort(-variance, kind="stable")[:n_genes])
    dense = logged[:, top].toarray().astype(np.float32)
    n_components = min(n_components, dense.shape[0] - 1, dense.shape[1])
    pca = PCA(n_components, svd_solver="randomized", random_state=seed)  # seeded: the same figures every run
    return pca.fit_transform(dense).astype(np.float32)
