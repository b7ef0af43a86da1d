"""Inference: cell embeddings, contextual gene embeddings and log-likelihoods from h5ad files."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tfx.checkpoint import Checkpoint
from tfx.data.anndata import CellReader
from tfx.tokenize import Tokenizer

log = logging.getLogger(__name__)


def aux_token_ids(ckpt: Checkpoint, obs: pd.DataFrame, source: str) -> np.ndarray | None:
    """Aux (assay) ids per cell; a missing column means 'unknown' (the reference crashes there)."""
    if not ckpt.aux_vocabs:
        return None
    columns = []
    for col, vocab in ckpt.aux_vocabs.items():
        if col not in obs.columns:
            log.warning("%s: obs has no '%s' column; every cell gets the unknown %s token", source, col, col)
            columns.append(np.full(len(obs), vocab["unknown"], dtype=np.int64))
        else:
            values = obs[col].astype(str).to_numpy()
            columns.append(np.array([vocab.get(v, vocab["unknown"]) for v in values], dtype=np.int64))
    return np.stack(columns, axis=1)


def tokenize_file(ckpt: Checkpoint, path, *, gene_col: str = "ensembl_id", use_raw: bool | None = None,
                  remove_duplicate_genes: bool = False, clip_counts: float | None = 30,
                  chunk_size: int = 4096, start: int = 0, stop: int | None = None):
    """Yield (first row, cells, aux ids, obs chunk) for every chunk of rows start..stop of an h5ad file."""
    reader = CellReader(path, ckpt.vocab.lookup, gene_col=gene_col, use_raw=use_raw,
                        remove_duplicate_genes=remove_duplicate_genes)
    tokenizer = Tokenizer(ckpt.model_cfg.seq_len, clip_counts=clip_counts,
                          normalize_to_scale=ckpt.data_cfg.normalize_to_scale)
    try:
        for first, cells in reader.iter_chunks(chunk_size, start, stop):
            obs = reader.obs.iloc[first : first + len(cells)]
            yield first, [tokenizer(ids, counts) for ids, counts in cells], aux_token_ids(ckpt, obs, str(path)), obs
    finally:
        reader.close()
