"""Training data held in memory: cells from h5ad files, for fine-tuning and small runs.

Endless, deterministic for a seed: each epoch shuffles the cells, tokenizes them (gene order,
clipping), groups cells of similar length within windows into token-budget batches, and deals
the batches round-robin to the ranks. Its position is the number of batches consumed, so a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset

from tfx.infer.engine import length_batches
from tfx.tokenize import Tokenizer, collate


class CellBatches(IterableDataset):
    def __init__(self, cells, aux_ids, pad_id: int, tokenizer: Tokenizer, *, labels=None, token_budget: int = 8192,
                 max_cells: int = 64, seed: int = 0, rank: int = 0, world_size: int = 1, window: int = 50):
        self.cells = [c for c in cells]
        self.aux_ids = aux_ids
        self.labels = labels
        self.pad_id = pad_id
        self.tokenizer = tokenizer
        self.token_budget, self.max_cells = token_budget, max_cells
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.window = window * max_cells
        self.start = 0  # batches consumed before this run (set on resume)

    def load_state_dict(self, state: dict) -> None:
        self.start = int(state["batches"])

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cells))
        lengths = np.array([min(len(self.cells[i][0]), self.tokenizer.seq_len) + 1 for i in order])
        batches = []
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            batches += [window[b] for b in length_batches(lengths[start : start + self.window],
                                                          self.token_budget, self.max_cells)]
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size  # every rank takes as many steps
        return batches[self.rank : usable : self.world_size]

    def _make(self, idx: np.ndarray, epoch: int, position: int):
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        cells = [self.tokenizer(*self.cells[i], rng=rng) for i in idx]
        batch = collate(cells, self.pad_id, self.tokenizer.seq_len,
                        None if self.aux_ids is None else self.aux_ids[idx])
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
