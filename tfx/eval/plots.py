"""2-D maps of cell representations (UMAP, or PCA: asked for, or where UMAP cannot run), saved as PNGs."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no backend, no display, no global state
from sklearn.decomposition import PCA

from tfx.atomic import atomic_path

log = logging.getLogger(__name__)


def layout_2d(features: np.ndarray, seed: int = 0, method: str = "umap") -> tuple[np.ndarray, str]:
    """UMAP coordinates, or the first two principal components (``method="pca"``, or when UMAP fails
    on tiny inputs), and the name of the method used."""
    if method == "umap":
        try:
            import umap

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # umap's notes on seeding and tiny graphs
                reducer = umap.UMAP(n_neighbors=min(15, len(features) - 1), random_state=seed, n_jobs=1)
                coords = reducer.fit_transform(features)
            if np.isfinite(coords).all():
                return coords, "UMAP"
            raise ValueError("non-finite coordinates")
        except Exception as err:  # umap raises many types on degenerate inputs
            log.warning("UMAP failed on %d cells (%s); plotting the first two principal components instead",
                        len(features), err)
    return PCA(2, random_state=seed).fit_transform(features), "PCA"


def scatter_png(path: str | os.PathLike, panels: dict[str, tuple[np.ndarray, str]], colours: np.ndarray,
                title: str) -> None:
    """One panel per representation (name -> (coordinates, method)), cells coloured by category."""
    categories = np.unique(colours)
    palette = colormaps["tab20" if len(categories) > 10 else "tab10"]
    fig = Figure(figsize=(5 * len(panels) + 2, 5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    size = max(2.0, 30.0 / np.sqrt(max(len(colours), 1) / 100))
    for ax, (name, (coords, method)) in zip(axes[0], panels.items()):
        for i, cat in enumerate(categories):
            mask = colours == cat
            ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=palette(i % palette.N), label=str(cat),
                       linewidths=0)
        ax.set_title(f"{name} ({method})")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
