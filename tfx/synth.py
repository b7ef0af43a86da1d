"""`tfx synth`: a seeded synthetic multi-species atlas with the shape of real CELLxGENE data.

Each species gets ``<species>.h5ad`` (raw integer counts, obs ``cell_type``/``species``/``assay``,
Ensembl-like ids in ``var["ensembl_id"]``, each cell type's true marker programme in
``uns["marker_programmes"]``) and ``<species>_gene.h5`` (the official embedding layout).

The generative model, in the order it is drawn:
- Genes: a shared set of one-to-one ortholog groups plus species-specific genes. An ortholog's
  embedding is its group's base vector plus small species noise, so orthologs sit close together
  the way ESM-2 embeddings of orthologous proteins do; species-specific genes get fresh vectors.
- Expression: log-normal gene abundances (shared by an ortholog group, shifted a little per
  species); cell types are lineage programs plus type programs over ortholog groups, shared by
  every species, each with marker genes that are off in every other lineage or type, plus a few
  species-specific markers; two continuous programs vary within types.
- Batches: per-species and per-assay gene shifts, and an assay-dependent sequencing depth.
- Counts: negative binomial (gamma-Poisson) around a log-normal per-cell library size, so cells
  range from tens to several hundred expressed genes.

Species ``k`` is drawn from its own seed stream, so ``--species 2`` makes the same first two
species as ``--species 3``. The synthetic species register themselves in ``tfx.registry.SPECIES``
on import, so the other commands accept them by name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tfx.atomic import write_h5ad
from tfx.registry import SPECIES
from tfx.vocab import Species, write_gene_embeddings

GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
SPECIES_NAMES = tuple(f"synth_{g}" for g in GREEK)
ASSAY_DEPTH = {"10x 3' v3": 1.0, "10x 3' v2": 0.5, "10x 5' v2": 0.7}  # official assay names
CELL_TYPES = {  # cell type -> lineage: types of a lineage share a program, so they are harder to tell apart
    "T cell": "lymphoid",
    "B cell": "lymphoid",
    "natural killer cell": "lymphoid",
    "monocyte": "myeloid",
    "macrophage": "myeloid",
    "fibroblast": "stromal",
    "endothelial cell": "stromal",
    "epithelial cell": "epithelial",
}
EMBEDDING_SCALE = 0.25  # per-dimension spread of the order of mean-pooled ESM-2 embeddings
ORTHOLOG_NOISE = 0.3  # species noise on an ortholog's embedding, relative to its group vector
LINEAGE_MARKERS, TYPE_MARKERS = 6, 12  # marker ortholog groups of each lineage and of each cell type
MARKER_ON = 4.75  # log fold change that puts a marker among its cells' most expressed genes

for _greek, _name in zip(GREEK, SPECIES_NAMES):
    SPECIES.register(_name, Species(_name, f"synthetic species {_greek}"))


def synth_atlas(output: str | os.PathLike, species: int = 3, cells: int = 600, genes: int = 800,
                ortholog_fraction: float = 0.75, embedding_dim: int = 32, seed: int = 0) -> dict:
    """Write the atlas under ``output``; return a summary (files, cells, genes, genes per cell)."""
    if not 1 <= species <= len(SPECIES_NAMES):
        raise ValueError(f"--species must be between 1 and {len(SPECIES_NAMES)}, got {species}")
    if cells < 1 or not 0 < ortholog_fraction <= 1 or genes * ortholog_fraction < 40:
        raise ValueError(f"need at least 1 cell and 40 orthologous genes per species, got {cells} cells and "
                         f"{genes} genes x {ortholog_fraction} ortholog fraction")
    output = Path(output)
    created = [p for p in (output, *output.parents) if not p.exists()]  # mkdir's, removed again on failure
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        return _write_atlas(output, species, cells, genes, ortholog_fraction, embedding_dim, seed, written)
    except BaseException:  # a full disk, Ctrl-C: leave nothing this call wrote (each file is written atomically)
        for path in written:
            path.unlink(missing_ok=True)
        for directory in created:  # the deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _write_atlas(output: Path, species: int, cells: int, genes: int, ortholog_fraction: float, embedding_dim: int,
                 seed: int, written: list[Path]) -> dict:
    shared = _shared_biology(np.random.default_rng(seed), round(genes * ortholog_fraction), embedding_dim)
    summary = {"output": str(output), "seed": seed, "embedding_dim": embedding_dim,
               "cell_types": list(CELL_TYPES), "species": {}}
    for k, name in enumerate(SPECIES_NAMES[:species]):
        rng = np.random.default_rng([seed, k + 1])
        adata, table = _species_atlas(rng, name, k, shared, cells, genes)
        h5ad_path, gene_path = output / f"{name}.h5ad", output / f"{name}_gene.h5"
        write_h5ad(adata, h5ad_path)
        written.append(h5ad_path)
        write_gene_embeddings(gene_path, list(adata.var["ensembl_id"]), table)
        written.append(gene_path)
        per_cell = np.diff(adata.X.indptr)
        summary["species"][name] = {
            "h5ad": str(h5ad_path), "gene_h5": str(gene_path), "cells": adata.n_obs, "genes": adata.n_vars,
            "orthologs": int((adata.var["ortholog_group"] != "").sum()),
            "genes_per_cell": {"min": int(per_cell.min()), "median": float(np.median(per_cell)),
                               "max": int(per_cell.max())},
        }
    return summary


def _shared_biology(rng: np.random.Generator, n_groups: int, dim: int) -> dict:
    """What every species inherits: ortholog group vectors, abundances and cell-type programs."""
    lineages = sorted(set(CELL_TYPES.values()))

    def program(n_up: int, n_down: int, strength: float = 1.0) -> np.ndarray:
        """Log fold changes over ortholog groups: some genes up, fewer down."""
        effect = np.zeros(n_groups)
        idx = rng.choice(n_groups, size=n_up + n_down, replace=False)
        effect[idx[:n_up]] = strength * rng.uniform(1.0, 3.0, n_up)
        effect[idx[n_up:]] = -strength * rng.uniform(0.5, 2.0, n_down)
        return effect

    scale = max(n_groups // 20, 3)
    lineage_programs = {lin: program(2 * scale, scale) for lin in lineages}
    # A type's own program is subtler than its lineage's: types within a lineage are the hard calls.
    type_programs = np.stack([lineage_programs[lin] + program(2 * scale // 3, scale // 3, strength=0.5)
                              for lin in CELL_TYPES.values()])
    abundance = rng.normal(0.0, 1.7, n_groups)
    # Markers: genes off everywhere but in one lineage or one cell type (CD3E in T cells, PECAM1 in
    # endothelium), about as many per type as real atlases have (see tests/test_synth.py).
    n_lineage, n_type = LINEAGE_MARKERS, TYPE_MARKERS
    while (n_lineage * len(lineages) + n_type * len(CELL_TYPES)) * 2 > n_groups:  # small atlases: fewer
        n_lineage, n_type = max(n_lineage // 2, 1), max(n_type // 2, 1)
    unused = iter(rng.permutation(n_groups))
    lineage_markers = {lin: [next(unused) for _ in range(n_lineage)] for lin in lineages}
    type_markers = [[next(unused) for _ in range(n_type)] for _ in CELL_TYPES]
    is_marker = np.zeros(n_groups, dtype=bool)
    programmes = []
    for t, lin in enumerate(CELL_TYPES.values()):
        markers = lineage_markers[lin] + type_markers[t]
        type_programs[t, markers] += MARKER_ON
        is_marker[markers] = True
        programmes.append(markers)
    abundance[is_marker] = rng.uniform(-3.5, -2.5, is_marker.sum())  # off unless a program switches it on
    return {
        "n_groups": n_groups,
        "group_vectors": rng.normal(size=(n_groups, dim)),
        "group_abundance": abundance,
        "type_programs": type_programs,
        "marker_programmes": programmes,  # per type: ortholog groups its lineage and the type switch on
        "state_programs": np.stack([program(scale, 0, strength=0.5) for _ in range(2)]),  # e.g. cycling, stress
    }


def _species_atlas(rng: np.random.Generator, name: str, k: int, shared: dict, n_cells: int,
                   n_genes: int) -> tuple[anndata.AnnData, np.ndarray]:
    n_groups = shared["n_groups"]
    n_specific = n_genes - n_groups
    n_types = len(CELL_TYPES)

    # Genes: orthologs first, then species-specific; var order is shuffled below.
    dim = shared["group_vectors"].shape[1]
    vectors = np.concatenate([
        shared["group_vectors"] + ORTHOLOG_NOISE * rng.normal(size=(n_groups, dim)),
        rng.normal(size=(n_specific, dim)),
    ]) * EMBEDDING_SCALE
    abundance = np.concatenate([shared["group_abundance"] + rng.normal(0.0, 0.3, n_groups),
                                rng.normal(-0.5, 1.7, n_specific)])
    type_effect = np.zeros((n_types, n_genes))
    type_effect[:, :n_groups] = shared["type_programs"]
    for t in range(n_types):  # species-specific markers: real but not transferable signal
        markers = n_groups + rng.choice(n_specific, size=min(8, n_specific), replace=False)
        type_effect[t, markers] = rng.uniform(1.0, 2.5, len(markers))
    state_effect = np.zeros((2, n_genes))
    state_effect[:, :n_groups] = shared["state_programs"]
    dispersion_shape = np.exp(rng.normal(np.log(3.0), 0.5, n_genes))  # NB shape: smaller = more overdispersed

    # Cells: uneven type proportions, assays with their own gene shifts and depths.
    type_p = 0.5 / n_types + 0.5 * rng.dirichlet(np.full(n_types, 2.0))
    cell_type = rng.choice(n_types, size=n_cells, p=type_p)
    assays = list(ASSAY_DEPTH)
    assay = rng.choice(len(assays), size=n_cells, p=rng.dirichlet(np.full(len(assays), 4.0)))
    assay_shift = rng.normal(0.0, 0.2, (len(assays), n_genes))
    depth = np.array([ASSAY_DEPTH[a] for a in assays])[assay]
    library = np.exp(rng.normal(np.log(1200.0), 0.9, n_cells)) * depth
    states = rng.normal(0.0, 0.7, (n_cells, 2))

    log_rate = abundance + type_effect[cell_type] + assay_shift[assay] + states @ state_effect
    log_rate -= log_rate.max(axis=1, keepdims=True)
    share = np.exp(log_rate)
    mean = library[:, None] * share / share.sum(axis=1, keepdims=True)
    counts = rng.poisson(rng.gamma(dispersion_shape, mean / dispersion_shape))

    order = rng.permutation(n_genes)
    letter = chr(ord("A") + k)
    numbers = np.sort(rng.choice(10**6, size=n_genes, replace=False))  # sparse, like real Ensembl numbering
    ids = np.array([f"ENSSYN{letter}{n:011d}" for n in numbers])
    groups = np.array([f"OG{g:05d}" for g in range(n_groups)] + [""] * n_specific)
    var = pd.DataFrame({"ensembl_id": ids, "ortholog_group": pd.Categorical(groups[order])}, index=ids)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.array(list(CELL_TYPES))[cell_type], categories=list(CELL_TYPES)),
            "species": pd.Categorical([name] * n_cells),
            "assay": pd.Categorical(np.array(assays)[assay], categories=assays),
        },
        index=[f"{name}_cell{i:05d}" for i in range(n_cells)],
    )
    X = sp.csr_matrix(counts[:, order].astype(np.float32))  # float32 integers, as CELLxGENE ships them
    # The truth a prompt should recover: each type's marker genes (off in every other lineage or type).
    gene_id = ids[np.argsort(order)]  # gene g sits at var position argsort(order)[g]
    uns = {"marker_programmes": {t: gene_id[m] for t, m in zip(CELL_TYPES, shared["marker_programmes"])}}
    return anndata.AnnData(X=X, obs=obs, var=var, uns=uns), vectors[order].astype(np.float32)
