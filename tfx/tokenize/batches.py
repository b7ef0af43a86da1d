"""Tokenized cells -> batches, the one pipeline that shard training, h5ad training, held-out
evaluation and inference share.

A cell takes ``cell_length`` positions: its aux tokens, then [START] and each gene it reads (at
most ``seq_len``). Padded batches group cells of similar length longest-first under a token
budget (cells x positions) and pad each batch to its longest cell. Packed batches fill rows of
``pack_row_len`` positions with whole cells, first-fit-decreasing, ``token_budget // pack_row_len``
rows a batch, so that every batch has one shape. A plan is a list of batches, each a list of rows
of cell indices (padded: one row, the batch's cells).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tfx.errors import InputError
from tfx.tokenize import TokenBatch, collate, length_batches
from tfx.tokenize.packing import cell_length, first_fit_decreasing, pack

Plan = list[np.ndarray]  # one batch: rows of cell indices


@dataclass(frozen=True)
class BatchSpec:
    """How big a batch is: at most ``token_budget`` positions (cells x padded length, or packed
    rows x ``pack_row_len``) and ``max_cells`` cells (padded batches). ``pack_row_len``: pack
    cells into rows of that many positions (0: pad each batch instead)."""

    token_budget: int = 16384
    max_cells: int = 256
    pack_row_len: int = 0

    def __post_init__(self):
        if self.token_budget < 1 or self.max_cells < 1 or self.pack_row_len < 0:
            raise InputError(f"token_budget {self.token_budget} and max_cells {self.max_cells} must be at least 1 "
                             f"(pack_row_len {self.pack_row_len}: 0 or more)")


class BatchPlanner:
    def __init__(self, seq_len: int, n_aux: int, spec: BatchSpec):
        self.seq_len, self.n_aux = seq_len, n_aux
        self.token_budget, self.max_cells = spec.token_budget, spec.max_cells
        self.pack_row_len = pack_row_len = spec.pack_row_len
        if pack_row_len:
            longest = cell_length(seq_len, seq_len, n_aux)
            if pack_row_len < longest:
                raise InputError(f"pack_row_len {pack_row_len} is shorter than the longest cell ({longest} positions: "
                                  f"seq_len and the aux tokens); raise it to at least {longest}")
            self.rows_per_batch = max(1, spec.token_budget // pack_row_len)

    def lengths(self, n_genes) -> np.ndarray:
        """Positions each cell of ``n_genes`` expressed genes takes."""
        return np.array([cell_length(int(n), self.seq_len, self.n_aux) for n in n_genes], dtype=np.int64)

    def plan(self, n_genes) -> list[Plan]:
        """The batches of cells with ``n_genes`` genes each (indices into ``n_genes``)."""
        lengths = self.lengths(n_genes)
        if not self.pack_row_len:
            return [[group] for group in length_batches(lengths, self.token_budget, self.max_cells)]
        rows = first_fit_decreasing(lengths, self.pack_row_len)
        return [rows[i : i + self.rows_per_batch] for i in range(0, len(rows), self.rows_per_batch)]

    def emit(self, plan: Plan, cell: Callable[[int], tuple[np.ndarray, np.ndarray]], aux_ids: np.ndarray | None,
             pad_id: int, labels: np.ndarray | None = None) -> tuple[TokenBatch, np.ndarray]:
        """(the batch, the cell index of each of its cells): ``cell(i)`` gives cell i's tokens,
        ``aux_ids[i]`` its aux ids and ``labels[i]`` its label."""
        idx = np.concatenate(plan).astype(np.int64) if plan else np.zeros(0, np.int64)
        cells = [cell(int(i)) for i in idx]
        aux = None if aux_ids is None else np.asarray(aux_ids, dtype=np.int64)[idx]
        if not self.pack_row_len:
            batch = collate(cells, pad_id, self.seq_len, aux)
        else:
            ends = np.cumsum([len(row) for row in plan], dtype=np.int64)
            rows = [np.arange(end - len(row), end) for row, end in zip(plan, ends)]
            rows += [np.zeros(0, dtype=np.int64)] * (self.rows_per_batch - len(rows))  # one shape for every batch
            batch = pack(cells, pad_id, self.seq_len, self.pack_row_len, aux, rows=rows)
        if labels is not None:
            batch.labels = torch.as_tensor(np.asarray(labels)[idx])
        return batch, idx
