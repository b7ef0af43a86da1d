"""The ESM2-CE baseline of `tfx eval --checkpoint` and ``tfx.evaluate(model=...)``: each cell the
pooled frozen protein embeddings of its genes, exactly as `tfx infer --model-type esm2ce` computes
it (the same engine, in memory)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from tfx.checkpoint import Checkpoint
from tfx.infer.run import InferOptions, infer_cells, infer_memory


def _with_held_out(ckpt: Checkpoint, held_out_genes: str | os.PathLike | None) -> Checkpoint:
    """``held_out_genes``: a species' gene file the checkpoint lacks, added so its cells have protein embeddings."""
    if held_out_genes and not any(name == os.path.basename(held_out_genes) for name, _ in ckpt.vocab.files):
        from tfx.checkpoint.surgery import add_species

        return add_species(ckpt, [held_out_genes])
    return ckpt


def esm2ce_embeddings(ckpt: Checkpoint, adata: anndata.AnnData, held_out_genes: str | os.PathLike | None = None,
                      use_raw: bool | None = None) -> np.ndarray:
    """Cells x protein width: the ESM2-CE embedding of each cell of ``adata`` (raw counts; ``use_raw`` as
    tfx infer's --use-raw)."""
    arrays, _ = infer_memory(_with_held_out(ckpt, held_out_genes), adata,
                             InferOptions(model_type="esm2ce", use_raw=use_raw))
    return arrays["embeddings"]


def esm2ce_frames(ckpt: Checkpoint, counts: list[str | os.PathLike],
                  held_out_genes: str | os.PathLike | None = None) -> list[pd.DataFrame]:
    """The ESM2-CE embeddings of each counts file (the h5ad files given to tfx infer), indexed by cell name."""
    ckpt = _with_held_out(ckpt, held_out_genes)
    frames = []
    for path in counts:  # read from the file, so that errors name it
        obs, arrays, _ = infer_cells(ckpt, Path(path), InferOptions(model_type="esm2ce"))
        frames.append(pd.DataFrame(arrays["embeddings"], index=obs.index))
    return frames
