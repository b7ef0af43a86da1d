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


@torch.no_grad()
def decode_nll(ckpt: Checkpoint, cells: list[tuple[np.ndarray, np.ndarray]], *, assay: str | None = None
               ) -> np.ndarray:
    """[cells] the same total as ``score_cells`` without ``support``, computed by the sampler's
    incremental decoder: teacher-forced one position at a time through the key/value cache, so no
    position can see a later one, whatever the full forward's mask does. Cells shorter than seq_len."""
    model, clip = ckpt.model.eval(), ckpt.data_cfg.clip_counts
    device = next(model.parameters()).device
    n, pad, end = len(cells), model.special.pad, model.special.end
    lengths = torch.tensor([len(ids) for ids, _ in cells], device=device)
    longest = int(lengths.max()) if n else 0
    ids = torch.full((n, longest), pad, dtype=torch.long, device=device)
    counts = torch.zeros(n, longest, device=device)
    for i, (g, c) in enumerate(cells):
        ids[i, : len(g)] = torch.as_tensor(g, device=device)
        counts[i, : len(c)] = torch.as_tensor(c, dtype=torch.float32, device=device)
    read = counts.clamp(max=clip) if clip else counts
    hidden, state = model.decode_start(n, aux_ids(ckpt, assay, n, device))
    total = torch.zeros(n, dtype=torch.float64, device=device)
    for j in range(longest + 1):
        target = torch.where(j < lengths, ids[:, j] if j < longest else pad, torch.where(j == lengths, end, pad))
        logp = torch.log_softmax(model.next_gene_logits(hidden), dim=-1).gather(1, target[:, None]).squeeze(1)
        total -= torch.where(j <= lengths, logp, 0.0).double()
        if j == longest:
            break
        gene = ids[:, j]
        count_nll = model.likelihood(model.count_rate(hidden, gene).float(), read[:, j], gene)
        total += torch.where(j < lengths, count_nll, 0.0).double()
        hidden = model.decode_genes(state, gene[:, None], read[:, j : j + 1])
    return total.cpu().numpy()
