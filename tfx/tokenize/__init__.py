"""Raw counts -> model input, written once for every consumer.

``Preprocessing`` is how a checkpoint reads counts (gene order, truncation to seq_len, count
normalisation and clipping): training from h5ad files or shards, inference, ``tfx.embed``,
scoring, sampling and prompting all go through it. ``TokenBatch`` is the batch the model reads;
``collate`` pads cells to their longest, ``length_batches`` groups them under a token budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from tfx.errors import ConfigError
from tfx.model.config import DEFAULT_CLIP_COUNTS, DataConfig
from tfx.registry import TOKENIZERS


@dataclass
class TokenBatch:
    """Cells as tokens: genes left-aligned, ``[PAD]`` after each cell's last gene (what
    ``tfx.model.transcriptformer.Tokens`` describes), and the cells' labels when training a task.

    Packed (``cell_ids`` set, see ``tfx.tokenize.packing``): a row holds whole cells one after
    another, each as it would be alone (its aux tokens, then its gene positions), then padding.
    """

    gene_ids: Tensor  # [B, L] int64: the gene each position predicts, [PAD] where none
    counts: Tensor  # [B, L] float32, 0 at padding
    aux_ids: Tensor | None = None  # [B, A] int64; packed: [cells, A]
    cell_ids: Tensor | None = None  # [B, L] int64 packed: the cell of each position, -1 at row padding
    positions: Tensor | None = None  # [B, L] int64 packed: aux tokens -A..-1, gene positions 0.., 0 at row padding
    labels: Tensor | None = None  # [cells] class index (int64) or regression target (float32)

    @property
    def n_cells(self) -> int:
        return self.gene_ids.shape[0] if self.cell_ids is None else int(self.cell_ids.max()) + 1

    def to(self, device) -> TokenBatch:
        moved = (getattr(self, f.name) for f in fields(self))
        return TokenBatch(*(None if t is None else t.to(device, non_blocking=True) for t in moved))


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


@dataclass(frozen=True)
class Preprocessing:
    """How a model reads a cell's raw counts: its genes in ``gene_order``, the first ``seq_len``
    kept, counts scaled to a total of ``normalize_to_scale`` (0: not) and clipped at
    ``clip_counts`` (None: not). Recorded in a checkpoint's data config by whoever trained it."""

    seq_len: int
    gene_order: str = "var_order"
    clip_counts: float | None = DEFAULT_CLIP_COUNTS
    normalize_to_scale: float = 0

    def __post_init__(self):
        clip, scale = self.clip_counts, self.normalize_to_scale
        if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
            raise ConfigError(f"clip_counts {clip} must be a positive number (the official models use 30)")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"normalize_to_scale {scale} must be 0 (off) or a positive total count")
        if self.gene_order not in TOKENIZERS:
            raise ConfigError(f"gene order '{self.gene_order}' is not one of {', '.join(TOKENIZERS.names())}")

    @classmethod
    def of(cls, cfg: DataConfig, seq_len: int) -> Preprocessing:
        return cls(seq_len, cfg.gene_order, cfg.clip_counts, cfg.normalize_to_scale)

    def __call__(self, ids: np.ndarray, counts: np.ndarray, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """One cell (expressed genes' ids in var order, raw counts) -> its tokens and model counts."""
        ids, counts = TOKENIZERS.get(self.gene_order)(ids, counts, rng)
        return np.asarray(ids[: self.seq_len], dtype=np.int64), self.counts(counts[: self.seq_len])

    def counts(self, counts: np.ndarray) -> np.ndarray:
        """The model counts of a whole cell's raw counts, in the order given."""
        counts = np.asarray(counts, dtype=np.float32)
        if self.normalize_to_scale and counts.size:
            counts = counts / counts.sum() * self.normalize_to_scale
        if self.clip_counts is not None:
            counts = np.clip(counts, 0, self.clip_counts)
        return counts

    def require_causal(self, what: str, source: str) -> None:
        """Sampling and prompting feed counts back one position at a time, before the cell's total
        exists; a model trained on total-normalised counts cannot be read that way."""
        if self.normalize_to_scale:
            raise ConfigError(
                f"checkpoint {source} reads counts normalised to a total of {self.normalize_to_scale:g} per cell, "
                f"which needs the whole cell before its first count; {what} reads counts one gene at a time, so it "
                "cannot use this model (train one with normalize_to_scale 0)")

    def read_counts(self, counts: Tensor) -> Tensor:
        """Counts read one position at a time (sampled, or given in a prompt), as a cell's are read;
        only for models that ``require_causal`` accepts."""
        return counts.clamp(max=self.clip_counts) if self.clip_counts is not None else counts


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
