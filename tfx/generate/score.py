"""Scoring cells in a given gene order with the training forward: the check on what a sampler drew."""

from __future__ import annotations

import numpy as np
import torch

from tfx.checkpoint import Checkpoint
from tfx.generate.sample import Species, allowed_next, aux_ids
from tfx.tokenize import collate


@torch.no_grad()
def score_cells(ckpt: Checkpoint, cells: list[tuple[np.ndarray, np.ndarray]], *, assay: str | None = None,
                support: tuple[Species, str] | None = None, max_genes: int | None = None) -> np.ndarray:
    """[cells] each cell's total negative log-probability, genes read in the order given (vocabulary
    ids, raw counts; clipped as the checkpoint reads them): every gene choice, [END] included, and
    every count, as the training objective factorises it.

    ``support`` (species, order) renormalises each choice over what a sampler with that order
    allows, so that the result is the negative of the sampler's ``log_prob``.
    """
    model, clip = ckpt.model.eval(), ckpt.data_cfg.clip_counts
    device = next(model.parameters()).device
    clipped = [(np.asarray(ids), np.clip(c, 0, clip) if clip else np.asarray(c, np.float32)) for ids, c in cells]
    batch = collate(clipped, model.special.pad, model.cfg.seq_len, None).to(device)
    batch.aux_ids = aux_ids(ckpt, assay, len(cells), device)
    out = model(batch)
    allowed = None
    if support is not None:
        species, order = support
        in_species = species.mask(model.vocab_size, device)
        limit = min(max_genes or model.cfg.seq_len, model.cfg.seq_len - 1)
        ids = batch.gene_ids
        drawn = torch.zeros(len(cells), model.vocab_size, dtype=torch.bool, device=device)
        last = torch.full((len(cells),), -1, dtype=torch.long, device=device)
        allowed = torch.zeros(*ids.shape, model.vocab_size, dtype=torch.bool, device=device)
        for t in range(ids.shape[1]):
            allowed[:, t] = allowed_next(in_species, drawn, last, t, order, limit, model.special.end)
            read = ids[:, t] != model.special.pad
            drawn[read, ids[read, t]] = True
            last = torch.where(read, ids[:, t], last)
    return model.sequence_nll(out, batch, allowed).double().cpu().numpy()
