"""Species-vs-cell-type mixing: does a representation group cells by type rather than by species?

Good cross-species embeddings have a high silhouette by cell type, a silhouette by species near
zero or below, a neighbourhood species entropy near its perfectly-mixed value, and high label
transfer from one species to another (see ``probes.label_transfer``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

SILHOUETTE_MAX_CELLS = 5000  # silhouette is quadratic in cells: score a fixed random sample beyond this
NEIGHBOURS = 30


def silhouette(features: np.ndarray, groups: np.ndarray, seed: int = 0) -> float | None:
    """Mean silhouette in [-1, 1] of the grouping; None with fewer than 2 groups."""
    if len(np.unique(groups)) < 2:
        return None
    sample = SILHOUETTE_MAX_CELLS if len(groups) > SILHOUETTE_MAX_CELLS else None
    return float(silhouette_score(features, groups, sample_size=sample, random_state=seed))


def neighbourhood_entropy(features: np.ndarray, batches: np.ndarray, k: int = NEIGHBOURS) -> dict:
    """Mean entropy of the batch labels among each cell's k nearest neighbours, over log(n batches):
    0 when neighbourhoods hold one species; ``mixed`` is what perfectly shuffled species would give."""
    names, codes = np.unique(batches, return_inverse=True)
    if len(names) < 2:
        return {"mean": None, "mixed": None, "k": k}
    k = min(k, len(batches) - 1)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features, return_distance=False)[:, 1:]
    share = np.stack([(codes[neighbours] == c).mean(axis=1) for c in range(len(names))], axis=1)
    overall = np.bincount(codes) / len(codes)
    return {"mean": float(np.mean(_entropy(share)) / np.log(len(names))),
            "mixed": float(_entropy(overall[None])[0] / np.log(len(names))), "k": k}


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
