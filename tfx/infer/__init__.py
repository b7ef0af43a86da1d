"""Inference: cell embeddings, contextual gene embeddings and log-likelihoods from h5ad files."""

from __future__ import annotations

from tfx.checkpoint import Checkpoint
from tfx.data.anndata import CellReader
from tfx.data.memory import obs_aux_ids
from tfx.data.preprocess import tokenizer


def tokenize_file(ckpt: Checkpoint, path, *, gene_col: str = "ensembl_id", use_raw: bool | None = None,
                  remove_duplicate_genes: bool = False, chunk_size: int = 4096, start: int = 0,
                  stop: int | None = None):
    """Yield (first row, cells, aux ids, obs chunk) for every chunk of rows start..stop of an h5ad
    file (or an in-memory AnnData), read as the checkpoint's data config says (``ckpt.data_cfg``)."""
    reader = CellReader(path, ckpt.vocab.lookup, gene_col=gene_col, use_raw=use_raw,
                        remove_duplicate_genes=remove_duplicate_genes)
    tokenize = tokenizer(ckpt.data_cfg, ckpt.model_cfg.seq_len)
    try:
        for first, cells in reader.iter_chunks(chunk_size, start, stop):
            obs = reader.obs.iloc[first : first + len(cells)]
            yield first, [tokenize(ids, counts) for ids, counts in cells], obs_aux_ids(ckpt.aux_vocabs, obs, str(reader.path)), obs
    finally:
        reader.close()
