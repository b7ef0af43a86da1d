"""Scoring cells in a given gene order with the training forward: the check on what a sampler drew."""

from __future__ import annotations

import numpy as np
import torch

from tfx.checkpoint import Checkpoint
from tfx.data.preprocess import preprocessing
from tfx.generate.sample import Species, allowed_next, aux_ids, aux_tensor
from tfx.tokenize.batches import BatchPlanner, BatchSpec


@torch.no_grad()
def score_cells(ckpt: Checkpoint, cells: list[tuple[np.ndarray, np.ndarray]], *, assay: str | None = None,
                support: tuple[Species, str] | None = None, max_genes: int | None = None,
                batches: BatchSpec = BatchSpec()) -> np.ndarray:
    """[cells] each cell's total negative log-probability, genes read in the order given (vocabulary
    ids, raw counts, read as the checkpoint reads a cell's counts): every gene choice, [END]
    included, and every count, as the training objective factorises it. Cells are batched under
    ``batches``' token budget.

    ``support`` (species, order) renormalises each choice over what a sampler with that order
    allows, so that the result is the negative of the sampler's ``log_prob``.
    """
    model, prep = ckpt.model.eval(), preprocessing(ckpt)
    device = next(model.parameters()).device
    seq_len = model.cfg.seq_len  # a longer cell is read as a file's is: its first seq_len genes
    model_cells = [(np.asarray(ids[:seq_len], dtype=np.int64), prep.counts(c[:seq_len])) for ids, c in cells]
    aux = aux_ids(ckpt, assay, len(cells))
    planner = BatchPlanner(seq_len, 0 if aux is None else aux.shape[1], batches)
    nll = np.zeros(len(cells), dtype=np.float64)
    for plan in planner.plan([len(ids) for ids, _ in model_cells]):
        batch, idx = planner.emit(plan, model_cells.__getitem__, aux, model.special.pad)
        batch = batch.to(device)
        allowed = None if support is None else _support(model, batch.gene_ids, *support, max_genes)
        nll[idx] = model.sequence_nll(model(batch), batch, allowed).double().cpu().numpy()
    return nll


def _support(model, ids: torch.Tensor, species: Species, order: str, max_genes: int | None) -> torch.Tensor:
    """[B, L, V] what a sampler with ``order`` allows at each position of cells read as ``ids``."""
    n, device = len(ids), ids.device
    in_species = species.mask(model.vocab_size, device)
    limit = min(max_genes or model.cfg.seq_len, model.cfg.seq_len - 1)
    drawn = torch.zeros(n, model.vocab_size, dtype=torch.bool, device=device)
    last = torch.full((n,), -1, dtype=torch.long, device=device)
    allowed = torch.zeros(*ids.shape, model.vocab_size, dtype=torch.bool, device=device)
    for t in range(ids.shape[1]):
        allowed[:, t] = allowed_next(in_species, drawn, last, t, order, limit, model.special.end)
        read = ids[:, t] != model.special.pad
        drawn[read, ids[read, t]] = True
        last = torch.where(read, ids[:, t], last)
    return allowed


@torch.no_grad()
def decode_nll(ckpt: Checkpoint, cells: list[tuple[np.ndarray, np.ndarray]], *, assay: str | None = None
               ) -> np.ndarray:
    """[cells] the same total as ``score_cells`` without ``support``, computed by the sampler's
    incremental decoder: teacher-forced one position at a time through the key/value cache, so no
    position can see a later one, whatever the full forward's mask does. Cells shorter than seq_len."""
    model, prep = ckpt.model.eval(), preprocessing(ckpt)
    prep.require_causal("teacher-forced decoding", ckpt.path)
    device = next(model.parameters()).device
    n, pad, end = len(cells), model.special.pad, model.special.end
    lengths = torch.tensor([len(ids) for ids, _ in cells], device=device)
    longest = int(lengths.max()) if n else 0
    ids = torch.full((n, longest), pad, dtype=torch.long, device=device)
    counts = torch.zeros(n, longest, device=device)
    for i, (g, c) in enumerate(cells):
        ids[i, : len(g)] = torch.as_tensor(g, device=device)
        counts[i, : len(c)] = torch.as_tensor(c, dtype=torch.float32, device=device)
    read = prep.read_counts(counts)
    hidden, state = model.decode_start(n, aux_tensor(ckpt, assay, n, device))
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

