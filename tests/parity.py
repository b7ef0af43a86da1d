"""Comparison helpers for parity against the reference."""

import numpy as np


def max_rel_error(ours, ref) -> float:
    """max |ours - ref| / max |ref|, NaN where both are NaN counted as equal."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    both_nan = np.isnan(ours) & np.isnan(ref)
    assert not (np.isnan(ours) ^ np.isnan(ref)).any(), "NaN in one result only"
    diff = np.abs(np.where(both_nan, 0, ours - ref))
    scale = np.abs(np.where(both_nan, 0, ref)).max()
    return float(diff.max() / scale) if scale > 0 else float(diff.max())
