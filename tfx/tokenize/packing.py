"""Sequence packing: several whole cells per row, so that training spends no compute on padding.

A cell takes the positions it would take alone: its aux tokens, then [START] and each gene it
reads (``cell_length``). Rows of ``row_len`` positions are filled first-fit-decreasing and padded
at their end; ``cell_ids`` and ``positions`` tell the model where each cell lies, so that attention,
the count head and the [END] quirk stay per cell (see ``TranscriptFormer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tfx.tokenize import TokenBatch


def cell_length(n_genes: int, seq_len: int, n_aux: int = 0) -> int:
    """Positions a cell of ``n_genes`` genes takes in a row (its aux tokens included)."""
    return n_aux + min(n_genes + 1, seq_len)


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity``: longest first, each into
    the first row with room."""
    free = np.zeros(len(lengths), dtype=np.int64)  # room left in each row opened so far
    rows: list[list[int]] = []
    for i in np.argsort(-np.asarray(lengths), kind="stable"):
        fits = np.flatnonzero(free[: len(rows)] >= lengths[i])
        row = int(fits[0]) if fits.size else len(rows)
        if row == len(rows):
            rows.append([])
            free[row] = capacity
        rows[row].append(int(i))
        free[row] -= lengths[i]
    return [np.array(r, dtype=np.int64) for r in rows]


def pack(cells: list[tuple[np.ndarray, np.ndarray]], pad_id: int, seq_len: int, row_len: int,
         aux_ids: np.ndarray | None = None, rows: Sequence[np.ndarray] | None = None) -> TokenBatch:
    """Tokenized cells -> a packed TokenBatch of [rows, row_len]; cell k of the batch is ``cells[k]``.

    ``rows`` lists which cells go in each row, in order (an empty row is all padding); by default
    first-fit-decreasing.
    """
    n_aux = 0 if aux_ids is None else np.shape(aux_ids)[1]
    lengths = np.array([cell_length(len(ids), seq_len, n_aux) for ids, _ in cells], dtype=np.int64)
    if len(cells) and lengths.max() > row_len:
        raise ValueError(f"a cell takes {lengths.max()} positions but packed rows hold {row_len}; make the row "
                         f"length at least seq_len + aux tokens ({seq_len + n_aux})")
    rows = first_fit_decreasing(lengths, row_len) if rows is None else rows
    fullest = max((int(lengths[np.asarray(m, dtype=np.int64)].sum()) for m in rows), default=0)
    if fullest > row_len:
        raise ValueError(f"a row's cells take {fullest} positions, more than row_len {row_len}")
    gene_ids = np.full((len(rows), row_len), pad_id, dtype=np.int64)
    counts = np.zeros((len(rows), row_len), dtype=np.float32)
    cell_ids = np.full((len(rows), row_len), -1, dtype=np.int64)
    positions = np.zeros((len(rows), row_len), dtype=np.int64)
    for r, members in enumerate(rows):
        offset = 0
        for c in members:
            span = lengths[c]
            ids, cnt = cells[c][0][:seq_len], cells[c][1][:seq_len]
            cell_ids[r, offset : offset + span] = c
            positions[r, offset : offset + span] = np.arange(-n_aux, span - n_aux)
            genes = offset + n_aux
            gene_ids[r, genes : genes + len(ids)] = ids
            counts[r, genes : genes + len(cnt)] = cnt
            offset += span
    aux = None if aux_ids is None else torch.from_numpy(np.asarray(aux_ids, dtype=np.int64))
    return TokenBatch(torch.from_numpy(gene_ids), torch.from_numpy(counts), aux,
                      cell_ids=torch.from_numpy(cell_ids), positions=torch.from_numpy(positions))
