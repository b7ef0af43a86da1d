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
from tfx.data.labels import LabelCodec
from tfx.errors import InputError
from tfx.tokenize import Preprocessing
from tfx.tokenize.batches import BatchPlanner, BatchSpec

log = logging.getLogger(__name__)


def read_cells(files, lookup, aux_vocabs: dict, gene_col: str, labels: LabelCodec | None = None):
    """(cells, aux ids, labels) of every cell with an in-vocabulary gene in ``files`` (and, where
    ``labels`` drops them, a label)."""
    cells, aux, encoded = [], [], []
    dropped = total = 0
    for path in files:
        reader = CellReader(path, lookup, gene_col=gene_col, aux_vocabs=aux_vocabs, labels=labels)
        total += reader.n_cells
        for chunk in reader.chunks():
            unlabelled = labels.unlabelled(chunk.labels) if labels is not None else np.zeros(len(chunk.cells), bool)
            dropped += int(unlabelled.sum())
            # a cell without genes teaches nothing; one without a label is here only when dropping is asked for
            keep = [i for i, (ids, _) in enumerate(chunk.cells) if len(ids) and not unlabelled[i]]
            cells += [chunk.cells[i] for i in keep]
            if chunk.aux_ids is not None:
                aux.append(chunk.aux_ids[keep])
            if chunk.labels is not None:
                encoded.append(chunk.labels[keep])
        reader.close()
    if dropped:
        log.warning("%s: dropped %d of %d cells that have no value in obs '%s' (task.missing_labels=drop)",
                    ", ".join(map(str, files)), dropped, total, labels.key)
    return cells, (np.concatenate(aux) if aux else None), (np.concatenate(encoded) if labels else None)


class CellBatches(IterableDataset):
    def __init__(self, cells, aux_ids, pad_id: int, preprocessing: Preprocessing, spec: BatchSpec, *,
                 labels: np.ndarray | None = None, seed: int = 0, rank: int = 0, world_size: int = 1, window: int = 50):
        self.cells, self.aux_ids, self.labels = list(cells), aux_ids, labels
        self.pad_id, self.preprocessing = pad_id, preprocessing
        n_aux = 0 if aux_ids is None else np.shape(aux_ids)[1]
        self.planner = BatchPlanner(preprocessing.seq_len, n_aux, spec)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.window = window * spec.max_cells
        self.start = 0  # batches consumed before this run (set on resume)
        self.n_genes = np.array([min(len(ids), preprocessing.seq_len) for ids, _ in self.cells], dtype=np.int64)

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
        cell: Callable = lambda i: self.preprocessing(*self.cells[i], rng=rng)  # noqa: E731
        return self.planner.emit(plan, cell, self.aux_ids, self.pad_id, self.labels)[0]

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
