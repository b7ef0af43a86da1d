"""Training data held in memory: cells from h5ad files, for fine-tuning and small runs.

Endless, deterministic for a seed: each epoch shuffles the cells, tokenizes them (gene order,
clipping), groups cells of similar length within windows into token-budget batches, and deals
the batches round-robin to the ranks. Its position is the number of batches consumed, so a
resumed run continues exactly where it stopped.

With ``pack_row_len`` the cells of each window are packed first-fit-decreasing into rows of that
many positions instead, ``token_budget // pack_row_len`` rows a batch: every batch has the same
shape and no padding but the rows' tails (and, once per window, empty rows completing the last batch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset

from tfx.tokenize import Tokenizer, collate, length_batches
from tfx.tokenize.packing import cell_length, first_fit_decreasing, pack


class CellBatches(IterableDataset):
    def __init__(self, cells, aux_ids, pad_id: int, tokenizer: Tokenizer, *, labels=None, token_budget: int = 8192,
                 max_cells: int = 64, seed: int = 0, rank: int = 0, world_size: int = 1, window: int = 50,
                 pack_row_len: int | None = None):
        self.cells = [c for c in cells]
        self.aux_ids = aux_ids
        self.labels = labels
        self.pad_id = pad_id
        self.tokenizer = tokenizer
        self.token_budget, self.max_cells = token_budget, max_cells
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.window = window * max_cells
        self.start = 0  # batches consumed before this run (set on resume)
        self.n_genes = np.array([min(len(ids), tokenizer.seq_len) for ids, _ in self.cells], dtype=np.int64)
        self.pack_row_len = pack_row_len
        if pack_row_len:
            n_aux = 0 if aux_ids is None else np.shape(aux_ids)[1]
            self.pack_lengths = np.array([cell_length(n, tokenizer.seq_len, n_aux) for n in self.n_genes])
            if self.pack_lengths.max(initial=0) > pack_row_len:
                raise ValueError(f"data.pack_row_len {pack_row_len} is shorter than the longest cell "
                                 f"({self.pack_lengths.max()} positions with its aux tokens); raise it")
            self.rows_per_batch = max(1, token_budget // pack_row_len)

    def load_state_dict(self, state: dict) -> None:
        self.start = int(state["batches"])

    def _epoch_batches(self, epoch: int) -> list:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cells))
        batches = []
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            batches += self._packed(window) if self.pack_row_len else self._padded(window)
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size  # every rank takes as many steps
        return batches[self.rank : usable : self.world_size]

    def _padded(self, window: np.ndarray) -> list[np.ndarray]:
        """Cells of similar length together, each batch padded to its longest."""
        lengths = self.n_genes[window] + 1
        return [window[b] for b in length_batches(lengths, self.token_budget, self.max_cells)]

    def _packed(self, window: np.ndarray) -> list[list[np.ndarray]]:
        """Rows of cells, rows_per_batch rows a batch; empty rows complete the last one (one shape)."""
        rows = [window[r] for r in first_fit_decreasing(self.pack_lengths[window], self.pack_row_len)]
        rows += [window[:0]] * (-len(rows) % self.rows_per_batch)
        return [rows[i : i + self.rows_per_batch] for i in range(0, len(rows), self.rows_per_batch)]

    def _make(self, plan, epoch: int, position: int):
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        idx = np.concatenate(plan) if self.pack_row_len else plan
        cells = [self.tokenizer(*self.cells[i], rng=rng) for i in idx]
        aux = None if self.aux_ids is None else self.aux_ids[idx]
        if self.pack_row_len:
            ends = np.cumsum([len(row) for row in plan])
            rows = [np.arange(end - len(row), end) for row, end in zip(plan, ends)]
            batch = pack(cells, self.pad_id, self.tokenizer.seq_len, self.pack_row_len, aux, rows=rows)
        else:
            batch = collate(cells, self.pad_id, self.tokenizer.seq_len, aux)
        if self.labels is None:
            return batch
        return batch, torch.as_tensor(self.labels[idx])

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("CellBatches tokenizes in the main process; use num_workers=0")
        skip, epoch = self.start, 0
        while True:
            batches = self._epoch_batches(epoch)
            if not batches:
                raise ValueError("too few cells for one batch per rank; lower the number of devices")
            if skip >= len(batches):
                skip -= len(batches)
                epoch += 1
                continue
            for position in range(skip, len(batches)):
                yield self._make(batches[position], epoch, position)
            skip = 0
            epoch += 1
