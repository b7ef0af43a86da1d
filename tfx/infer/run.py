"""`tfx infer`: an h5ad in, an h5ad of embeddings (and log-likelihoods) out, streamed in chunks.

The output is written under a temporary name and renamed when complete. Cell embeddings go to
``obsm["embeddings"]`` chunk by chunk, so memory stays bounded by the chunk size; contextual gene
embeddings use the reference's ``uns`` keys.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from anndata.io import write_elem
from tqdm import tqdm

from tfx.atomic import atomic_path
from tfx.checkpoint import Checkpoint
from tfx.data.anndata import CellReader, InputError
from tfx.infer import tokenize_file
from tfx.infer.engine import run_cells

log = logging.getLogger(__name__)


@dataclass
class InferOptions:
    emb_type: str = "cell"
    llh: bool = False
    gene_col: str = "ensembl_id"
    use_raw: bool | None = None
    remove_duplicate_genes: bool = False
    clip_counts: float | None = 30
    device: str = "auto"
    precision: str = "32"
    token_budget: int = 16384
    max_cells: int = 256
    chunk_size: int = 4096


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def infer_file(ckpt: Checkpoint, data: str | os.PathLike, output: str | os.PathLike, opts: InferOptions) -> dict:
    """Run inference over ``data`` and write ``output``; returns a small summary."""
    data, output = Path(data), Path(output)
    if output.resolve() == data.resolve():
        raise InputError(f"{output}: the output would overwrite the input; choose another --output")
    device = resolve_device(opts.device)
    model = ckpt.model.to(device).eval()
    reader = CellReader(data, ckpt.vocab.lookup, gene_col=opts.gene_col, use_raw=opts.use_raw,
                        remove_duplicate_genes=opts.remove_duplicate_genes)
    n_cells, obs = reader.n_cells, reader.obs.copy()
    reader.close()

    llh = np.full(n_cells, np.nan, dtype=np.float32) if opts.llh else None
    cge_emb, cge_cells, cge_genes = [], [], []
    empty = 0
    started = time.perf_counter()
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as f:
        write_elem(f, "obsm", {})
        emb_ds = None
        if opts.emb_type == "cell":  # streamed: memory stays bounded by the chunk size
            emb_ds = f["obsm"].create_dataset("embeddings", shape=(n_cells, model.cfg.embed_dim), dtype="f4")
            emb_ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        bar = tqdm(total=n_cells, unit="cell", desc="infer", disable=None)
        for start, cells, aux, _ in tokenize_file(
            ckpt, data, gene_col=opts.gene_col, use_raw=opts.use_raw,
            remove_duplicate_genes=opts.remove_duplicate_genes, clip_counts=opts.clip_counts,
            chunk_size=opts.chunk_size,
        ):
            empty += sum(len(ids) == 0 for ids, _ in cells)
            res = run_cells(model, cells, aux, ckpt.vocab.pad, emb_type=opts.emb_type, llh=opts.llh,
                            token_budget=opts.token_budget, max_cells=opts.max_cells, device=device,
                            precision=opts.precision)
            stop = start + len(cells)
            if emb_ds is not None:
                emb_ds[start:stop] = res.embeddings
            else:
                for i, (e, g) in enumerate(zip(res.cge_embeddings, res.cge_gene_ids)):
                    cge_emb.append(e)
                    cge_cells.append(np.full(len(g), start + i, dtype=np.int64))
                    cge_genes.append(g)
            if llh is not None:
                llh[start:stop] = res.llh
            bar.update(len(cells))
            bar.set_postfix(cells_per_s=f"{bar.n / (time.perf_counter() - started):.0f}")
        bar.close()
        if empty:
            log.warning("%s: %d of %d cells have no expressed gene in the vocabulary; kept (their llh is NaN)",
                        data, empty, n_cells)
        if llh is not None:
            obs["llh"] = llh
        uns = {}
        if opts.emb_type == "cge":
            dim = model.cfg.embed_dim
            genes = np.concatenate(cge_genes) if cge_genes else np.zeros(0, np.int64)
            uns = {
                "cge_embeddings": np.concatenate(cge_emb) if cge_emb else np.zeros((0, dim), np.float32),
                "cge_cell_indices": np.concatenate(cge_cells) if cge_cells else np.zeros(0, np.int64),
                "cge_gene_names": np.array(ckpt.vocab.tokens, dtype=object)[genes].astype(str),
            }
        _write_anndata_skeleton(f, obs, uns)
    seconds = time.perf_counter() - started
    return {"cells": n_cells, "empty_cells": empty, "seconds": seconds, "output": str(output)}


def _write_anndata_skeleton(f: h5py.File, obs: pd.DataFrame, uns: dict) -> None:
    """Everything of an h5ad but the streamed obsm arrays, in anndata's own encoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index([], dtype=str)))
        write_elem(f, "uns", uns)
        for key in ("varm", "obsp", "varp", "layers"):
            write_elem(f, key, {})
    f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
