"""One cell -> tokens: gene order, truncation to seq_len, count normalisation and clipping;
cells grouped into batches under a token budget; and a batch of cells -> a TokenBatch padded to its
longest cell."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tfx.model.config import DEFAULT_CLIP_COUNTS
from tfx.model.transcriptformer import TokenBatch
from tfx.registry import TOKENIZERS


# Gene orderings. Each takes the expressed in-vocabulary genes of a cell in var order.
@TOKENIZERS.register("var_order")
def var_order(ids: np.ndarray, counts: np.ndarray, rng=None):
    """The reference's inference order: expressed genes as they come in var."""
    return ids, counts


@TOKENIZERS.register("random")
def random_order(ids, counts, rng=None):
    perm = (rng or np.random.default_rng()).permutation(len(ids))
    return ids[perm], counts[perm]


@TOKENIZERS.register("expression_sorted")
def expression_sorted(ids, counts, rng=None):
    order = np.argsort(-counts, kind="stable")
    return ids[order], counts[order]


@dataclass
class Tokenizer:
    seq_len: int
    order: str = "var_order"
    clip_counts: float | None = DEFAULT_CLIP_COUNTS
    normalize_to_scale: float = 0

    def __post_init__(self):
        self._order = TOKENIZERS.get(self.order)

    def __call__(self, ids: np.ndarray, counts: np.ndarray, rng=None) -> tuple[np.ndarray, np.ndarray]:
        ids, counts = self._order(ids, counts, rng)
        ids = np.asarray(ids[: self.seq_len], dtype=np.int64)
        counts = np.asarray(counts[: self.seq_len], dtype=np.float32)
        if self.normalize_to_scale and counts.size:
            counts = counts / counts.sum() * self.normalize_to_scale
        if self.clip_counts is not None:
            counts = np.clip(counts, 0, self.clip_counts)
        return ids, counts


def collate(cells: list[tuple[np.ndarray, np.ndarray]], pad_id: int, seq_len: int,
            aux_ids: np.ndarray | None = None) -> TokenBatch:
    """Pad to the longest cell plus one position (the output after a cell's last gene is part of
    its embedding), never beyond seq_len."""
    longest = max((len(ids) for ids, _ in cells), default=0)
    length = max(1, min(longest + 1, seq_len))
    gene_ids = np.full((len(cells), length), pad_id, dtype=np.int64)
    counts = np.zeros((len(cells), length), dtype=np.float32)
    for row, (ids, c) in enumerate(cells):
        gene_ids[row, : len(ids)] = ids
        counts[row, : len(c)] = c
    aux = None if aux_ids is None else torch.from_numpy(np.asarray(aux_ids, dtype=np.int64))
    return TokenBatch(torch.from_numpy(gene_ids), torch.from_numpy(counts), aux)


def length_batches(lengths: np.ndarray, token_budget: int, max_cells: int) -> Iterator[np.ndarray]:
    """Indices grouped longest-first so that cells x padded length stays within the budget."""
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_cells, token_budget // longest))
        yield order[start : start + size]
        start += size
