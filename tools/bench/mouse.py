"""The real mouse cells the benchmarks share: ../shared/data/mouse_val.h5ad with cell types of
fewer than 10 cells dropped, and random stand-in gene embeddings for its genes (no ESM-2 weights
can be fetched here)."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata
import numpy as np

MOUSE = Path(__file__).resolve().parents[3] / "shared" / "data" / "mouse_val.h5ad"


def mouse_cells(work: Path, dim: int = 32) -> tuple[anndata.AnnData, Path]:
    """(the cells, their gene embedding file written under ``work``); exits when the data is absent."""
    from tfx.eval.probes import large_classes
    from tfx.vocab import write_gene_embeddings

    if not MOUSE.exists():
        sys.exit(f"{MOUSE} is absent: this benchmark needs the real data beside the project")
    cells = anndata.read_h5ad(MOUSE)
    keep, _ = large_classes(cells.obs["cell_type"].astype(str).to_numpy())
    cells = cells[keep].copy()
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str)
    gene_file = work / "mus_musculus_gene.h5"
    rng = np.random.default_rng(0)
    write_gene_embeddings(gene_file, list(cells.var["ensembl_id"]), rng.normal(size=(cells.n_vars, dim)).astype(np.float32))
    return cells, gene_file
