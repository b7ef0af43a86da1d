"""`tfx eval --homology`: does cross-species label transfer merely follow how many close homologs
the held-out species shares with the training species?

For each gene of the held-out species' embedding file: the cosine similarity of its nearest
training gene (the checkpoint's genes, less any of the file's own) in protein-embedding space.
For each held-out cell: the share of its counts on genes with a close homolog (similarity >= the
threshold). Then kNN and logistic regression fitted on the training cells' embeddings label the
held-out cells, and accuracy is reported in quantile bins of that share.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.figure import Figure  # no pyplot: no backend, no display, no global state
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import NearestNeighbors

from tfx.atomic import atomic_path
from tfx.data.anndata import strip_version
from tfx.errors import InputError
from tfx.eval import probes

DEFAULT_THRESHOLD = 0.8
N_BINS = 5  # quantile bins of the homolog share (fewer when shares tie)
HIST_BINS = 20
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass
class HomologyGenes:
    """What `tfx eval --homology` loads: the held-out genes and the checkpoint's training genes."""

    gene_file: str
    checkpoint: str
    genes: list[str]  # the held-out species' genes, file order
    embeddings: np.ndarray  # genes x dim, from the gene file
    training_genes: list[str]  # the checkpoint's genes less the file's own
    training_embeddings: np.ndarray  # training genes x dim, the checkpoint's frozen table
    excluded: int  # genes of the file that the checkpoint's vocabulary also holds
    threshold: float = DEFAULT_THRESHOLD


def load_genes(ckpt, gene_file: str | os.PathLike, threshold: float = DEFAULT_THRESHOLD) -> HomologyGenes:
    """The held-out genes of ``gene_file`` and the training genes of ``ckpt`` (a loaded ``Checkpoint``)."""
    from tfx.vocab import read_gene_embeddings

    genes, table = read_gene_embeddings(gene_file)
    checkpoint = str(ckpt.path)
    own = set(genes)
    vocab_genes = [g for _, file_genes in ckpt.vocab.files for g in file_genes]
    training = [g for g in vocab_genes if g not in own]
    if not training:
        raise InputError(f"--homology {gene_file}: every gene of the checkpoint {checkpoint} is in this file, so "
                         "there is no training gene to compare with; pass the held-out species' gene file")
    full = ckpt.model.gene_embeddings.embedding.weight.detach().cpu().numpy()
    if full.shape[1] != table.shape[1]:
        raise InputError(f"--homology {gene_file}: gene embeddings of dimension {table.shape[1]}, but the checkpoint "
                         f"{checkpoint} has {full.shape[1]}; embed the proteins with the checkpoint's ESM-2 model")
    rows = np.array([ckpt.vocab.index[g] for g in training], dtype=np.int64)
    return HomologyGenes(str(gene_file), str(checkpoint), genes, table, training, full[rows],
                         len(vocab_genes) - len(training), threshold)


def nearest_similarity(new: np.ndarray, training: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``new`` to its nearest row of ``training``."""
    distance, _ = NearestNeighbors(n_neighbors=1, metric="cosine").fit(training).kneighbors(new)
    return 1.0 - distance[:, 0]


def held_out_files(file_genes: list[np.ndarray], genes: list[str]) -> np.ndarray:
    """Which counts files are the held-out species': most of their gene ids are the gene file's."""
    own = set(strip_version(genes))
    return np.array([np.isin(strip_version(g), list(own)).mean() > 0.5 for g in file_genes])


def homolog_share(counts: sp.csr_matrix, count_genes: np.ndarray, h: HomologyGenes,
                  similarity: np.ndarray) -> np.ndarray:
    """Per cell, the share of its counts on the gene file's genes that falls on genes with a close
    homolog; NaN for a cell without counts on those genes."""
    close = dict(zip(strip_version(h.genes), similarity >= h.threshold))
    ids = strip_version(count_genes)
    in_file = np.array([g in close for g in ids])
    is_close = np.array([close.get(g, False) for g in ids])
    counts = sp.csr_matrix(counts, dtype=np.float64)
    total = np.asarray(counts @ in_file.astype(np.float64)).ravel()
    near = np.asarray(counts @ is_close.astype(np.float64)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, near / np.where(total > 0, total, 1), np.nan)


def for_cells(h: HomologyGenes, cells, label: str, embeddings_paths: list) -> dict:
    """The `homology` section for `tfx eval`'s cells (``tfx.eval.inputs.EvalCells``, with counts)."""
    if cells.counts is None:
        raise InputError("--homology: the homolog share is computed from the cells' counts; "
                         "pass --counts with the h5ad files given to tfx infer")
    held_files = held_out_files(cells.file_genes, h.genes)
    held_out = np.isin(np.asarray(cells.sources, dtype=str),
                       [str(p) for p, held in zip(embeddings_paths, held_files) if held])
    return homology_report(h, cells.embeddings, cells.obs[label], cells.counts, cells.genes, held_out)


def homology_report(h: HomologyGenes, embeddings: np.ndarray, labels: pd.Series, counts: sp.csr_matrix,
                    count_genes: np.ndarray, held_out: np.ndarray) -> dict:
    """The `homology` section of report.json. ``held_out``: a mask of the cells of the held-out
    species; the others are the training species' cells. ``labels``: per cell, NaN when unlabelled."""
    if not held_out.any():
        raise InputError(f"--homology {h.gene_file}: no --counts file has this file's genes, so no cell is held out; "
                         "pass the held-out species' counts (and embeddings) too")
    if held_out.all():
        raise InputError(f"--homology {h.gene_file}: every --counts file has this file's genes, so no cell is a "
                         "training cell; pass the training species' counts and embeddings too")
    similarity = nearest_similarity(h.embeddings, h.training_embeddings)
    share = homolog_share(counts[held_out], count_genes, h, similarity)

    labelled = labels.notna().to_numpy()
    names = labels.astype(str).to_numpy()
    fit = ~held_out & labelled
    if len(np.unique(names[fit])) < 2 or fit.sum() < probes.MIN_CLASS_CELLS:
        raise InputError(f"--homology: the training cells hold {fit.sum()} labelled cells of "
                         f"{len(np.unique(names[fit]))} classes; transfer needs at least "
                         f"{probes.MIN_CLASS_CELLS} cells of 2 classes")
    test = np.flatnonzero(held_out)
    scored = labelled[test] & np.isin(names[test], np.unique(names[fit])) & np.isfinite(share)
    if not scored.any():
        raise InputError(f"--homology {h.gene_file}: no held-out cell with counts on its genes has a '{labels.name}' "
                         "label that the training cells have; nothing to score")
    test, test_share, truth = test[scored], share[scored], names[test[scored]]
    bins, edges = _quantile_bins(test_share)

    transfer = {}
    for name, clf in probes.classifiers().items():
        predicted = clf.fit(embeddings[fit], names[fit]).predict(embeddings[test])
        correct = predicted == truth
        transfer[name] = {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, labels=np.unique(truth), average="macro")),
            "bins": [{"share_from": float(edges[b]), "share_to": float(edges[b + 1]), "cells": int((bins == b).sum()),
                      "accuracy": float(correct[bins == b].mean())} for b in range(len(edges) - 1) if (bins == b).any()],
        }
    finite = share[np.isfinite(share)]
    return {
        "gene_file": h.gene_file,
        "checkpoint": h.checkpoint,
        "threshold": h.threshold,
        "genes": {"held_out": len(h.genes), "training": len(h.training_genes), "excluded_from_training": h.excluded,
                  "close_homolog": int((similarity >= h.threshold).sum()),
                  "close_homolog_share": float((similarity >= h.threshold).mean())},
        "nn_similarity": {"quantiles": _quantiles(similarity), "histogram": _histogram(similarity, -1.0, 1.0)},
        "cells": {"training": int((~held_out).sum()), "held_out": int(held_out.sum()),
                  "without_counts": int((~np.isfinite(share)).sum()), "scored": len(test)},
        "homolog_share": {"quantiles": _quantiles(finite), "histogram": _histogram(finite, 0.0, 1.0)},
        "transfer": transfer,
    }


def _quantile_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each value and the bin edges: up to N_BINS quantile bins, fewer where values tie."""
    if len(np.unique(values)) < 2:
        lo = float(values.min()) if len(values) else 0.0
        return np.zeros(len(values), dtype=int), np.array([lo, lo])
    bins, edges = pd.qcut(values, min(N_BINS, len(values)), labels=False, retbins=True, duplicates="drop")
    return np.asarray(bins, dtype=int), edges


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    return {f"q{round(q * 100):02d}": (float(np.quantile(values, q)) if len(values) else None) for q in QUANTILES}


def _histogram(values: np.ndarray, lo: float, hi: float) -> dict:
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=HIST_BINS, range=(lo, hi))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def summary_line(section: dict) -> str:
    genes, knn = section["genes"], section["transfer"]["knn"]["bins"]
    return (f"homology: {genes['close_homolog_share']:.1%} of {genes['held_out']} held-out genes have a close homolog "
            f"(cosine >= {section['threshold']:g}); kNN transfer accuracy {knn[0]['accuracy']:.3f} in the lowest "
            f"homolog-share bin ({knn[0]['cells']} cells) vs {knn[-1]['accuracy']:.3f} in the highest "
            f"({knn[-1]['cells']} cells)")


def markdown(section: dict) -> list[str]:
    genes, cells, q = section["genes"], section["cells"], section["nn_similarity"]["quantiles"]
    s = section["homolog_share"]["quantiles"]
    lines = ["", f"## Homology: `{section['gene_file']}` held out", "",
             f"{genes['held_out']} held-out genes against {genes['training']} training genes of the checkpoint: "
             f"{genes['close_homolog']} ({genes['close_homolog_share']:.1%}) have a nearest training gene at cosine "
             f">= {section['threshold']:g} (nearest-neighbour cosine: median {q['q50']:.3f}, "
             f"10% {q['q10']:.3f}, 90% {q['q90']:.3f}).",
             f"Per held-out cell, share of its counts on such genes: median {_fmt(s['q50'])}, "
             f"10% {_fmt(s['q10'])}, 90% {_fmt(s['q90'])}. {cells['scored']} of {cells['held_out']} held-out cells "
             f"labelled from {cells['training']} training cells:", "",
             "| classifier | homolog share bin | cells | accuracy |", "|---|---|---|---|"]
    for name, t in section["transfer"].items():
        for b in t["bins"]:
            lines.append(f"| {name} | {b['share_from']:.3f} to {b['share_to']:.3f} | {b['cells']} | {b['accuracy']:.3f} |")
        lines.append(f"| {name} | all | {cells['scored']} | {t['accuracy']:.3f} |")
    lines += ["", "Flat accuracy across bins: transfer does not merely follow the homolog share; accuracy rising "
              "with the share: close homologs (leakage through the protein embeddings) explain part of it."]
    return lines


def plot_png(path: str | os.PathLike, section: dict) -> None:
    """NN-cosine histogram (threshold marked), homolog-share histogram, accuracy per share bin."""
    fig = Figure(figsize=(16, 4.5))
    ax_sim, ax_share, ax_acc = fig.subplots(1, 3)
    for ax, hist, xlabel in [(ax_sim, section["nn_similarity"]["histogram"], "cosine to nearest training gene"),
                             (ax_share, section["homolog_share"]["histogram"], "share of counts on close-homolog genes")]:
        edges = np.asarray(hist["edges"])
        ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
        ax.set_xlabel(xlabel)
    ax_sim.axvline(section["threshold"], color="#c44e52", linestyle="--", label=f"threshold {section['threshold']:g}")
    ax_sim.legend(frameon=False)
    ax_sim.set_ylabel("held-out genes")
    ax_sim.set_title("nearest-neighbour similarity")
    ax_share.set_ylabel("held-out cells")
    ax_share.set_title("homolog share per cell")
    for name, t in section["transfer"].items():
        mids = [(b["share_from"] + b["share_to"]) / 2 for b in t["bins"]]
        ax_acc.plot(mids, [b["accuracy"] for b in t["bins"]], marker="o", label=f"{name} (all: {t['accuracy']:.2f})")
    first = next(iter(section["transfer"].values()))["bins"]
    for b in first:
        ax_acc.annotate(f"n={b['cells']}", ((b["share_from"] + b["share_to"]) / 2, 0.02), ha="center", fontsize=8)
    ax_acc.set_ylim(0, 1.05)
    ax_acc.set_xlabel("homolog share bin (centre)")
    ax_acc.set_ylabel("transfer accuracy")
    ax_acc.set_title("label transfer by homolog share")
    ax_acc.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(tmp, format="png", dpi=100)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
