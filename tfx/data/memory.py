"""Training data held in memory: cells from h5ad files, for fine-tuning and small runs.

Endless, deterministic for a seed: each epoch shuffles the cells, tokenizes them, plans batches
within windows of cells (``tfx.tokenize.batches``: padded or packed) and deals the batches
round-robin to the ranks. Its position is the number of batches consumed, so a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import IterableDataset

from tfx.data.anndata import CellReader
from tfx.errors import InputError
from tfx.tokenize import Tokenizer
from tfx.tokenize.batches import BatchPlanner
from tfx.vocab.aux import aux_token_ids

log = logging.getLogger(__name__)


def obs_aux_ids(aux_vocabs: dict, obs, source: str) -> np.ndarray | None:
    """Aux ids of an h5ad's cells; a missing column means 'unknown' (the reference crashes there)."""
    for col in aux_vocabs:
        if col not in obs.columns:
            log.warning("%s: obs has no '%s' column; every cell gets the unknown %s token", source, col, col)
    values = {col: obs[col].astype(str).to_numpy() for col in aux_vocabs if col in obs.columns}
    return aux_token_ids(aux_vocabs, values, len(obs))


def read_cells(files, lookup, aux_vocabs: dict, gene_col: str, label_key: str | None = None):
    """(cells, aux ids, labels) of every cell with an in-vocabulary gene in ``files``."""
    cells, aux, labels = [], [], []
    for path in files:
        reader = CellReader(path, lookup, gene_col=gene_col)
        if label_key and label_key not in reader.obs.columns:
            raise InputError(f"{path}: obs has no column '{label_key}'; set task.label_key to an obs column")
        for start, chunk in reader.iter_chunks():
            obs = reader.obs.iloc[start : start + len(chunk)]
            keep = [i for i, (ids, _) in enumerate(chunk) if len(ids)]  # a cell without genes teaches nothing
            cells += [chunk[i] for i in keep]
            a = obs_aux_ids(aux_vocabs, obs, str(path))
            if a is not None:
                aux.append(a[keep])
            if label_key:
                labels += list(obs[label_key].to_numpy()[keep])
        reader.close()
    return cells, (np.concatenate(aux) if aux else None), (np.array(labels) if label_key else None)


class CellBatches(IterableDataset):
    def __init__(self, cells, aux_ids, pad_id: int, tokenizer: Tokenizer, *, labels: np.ndarray | None = None,
                 token_budget: int = 8192, max_cells: int = 64, seed: int = 0, rank: int = 0, world_size: int = 1,
                 window: int = 50, pack_row_len: int | None = None):
        self.cells, self.aux_ids, self.labels = list(cells), aux_ids, labels
        self.pad_id, self.tokenizer = pad_id, tokenizer
        n_aux = 0 if aux_ids is None else np.shape(aux_ids)[1]
        self.planner = BatchPlanner(tokenizer.seq_len, n_aux, token_budget, max_cells, pack_row_len)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.window = window * max_cells
        self.start = 0  # batches consumed before this run (set on resume)
        self.n_genes = np.array([min(len(ids), tokenizer.seq_len) for ids, _ in self.cells], dtype=np.int64)

    def load_state_dict(self, state: dict) -> None:
        self.start = int(state["batches"])

    def _epoch_batches(self, epoch: int) -> list:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cells))
        batches = []
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            batches += [[window[row] for row in plan] for plan in self.planner.plan(self.n_genes[window])]
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size  # every rank takes as many steps
        return batches[self.rank : usable : self.world_size]

    def _make(self, plan, epoch: int, position: int):
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        cell: Callable = lambda i: self.tokenizer(*self.cells[i], rng=rng)  # noqa: E731
        batch, idx = self.planner.emit(plan, cell, self.aux_ids, self.pad_id)
        return batch if self.labels is None else (batch, torch.as_tensor(self.labels[idx]))

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("CellBatches tokenizes in the main process; use num_workers=0")
        skip, epoch = self.start, 0
        while True:
            batches = self._epoch_batches(epoch)
            if not batches:
                raise InputError("too few cells for one batch per rank; lower the number of devices")
            if skip >= len(batches):
                skip -= len(batches)
                epoch += 1
                continue
            for position in range(skip, len(batches)):
                yield self._make(batches[position], epoch, position)
            skip = 0
            epoch += 1
