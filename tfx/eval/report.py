"""`tfx eval`: score cell embeddings beside a PCA-of-log-counts baseline on the same cells, and
write ``report.json``, ``summary.md`` and 2-D maps of the cells as PNGs (each written whole, then renamed)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tfx.atomic import atomic_path
from tfx.progress import progress
from tfx.errors import InputError
from tfx.eval import czbench, mixing, plots, probes
from tfx.eval import homology as homology_
from tfx.eval.compare import compare
from tfx.eval.inputs import load_cells, pca_of_log_counts, read_aligned

PathOrPaths = str | os.PathLike | list[str | os.PathLike]


def evaluate(embeddings_path: PathOrPaths, label: str, *, output_dir: str | os.PathLike,
             batch: str | None = None, counts_path: PathOrPaths | None = None, seed: int = 42,
             compare_paths: list[str | os.PathLike] | None = None, esm2ce: list[pd.DataFrame] | None = None,
             homology: homology_.HomologyGenes | None = None, maps: str = "umap", cz_benchmarks: bool = True) -> dict:
    """Score obsm["embeddings"] of one or more `tfx infer` outputs (stacked in order; counts files,
    if given, pair with them one to one) and write the report under ``output_dir``. Each of
    ``compare_paths`` holds other embeddings of the same cells, compared on identical folds.
    ``esm2ce``: the ESM2-CE baseline of the cells (per file, indexed by cell name), scored beside.
    ``homology``: the held-out species' genes and the checkpoint's (``tfx.eval.homology.load_genes``):
    adds the homology-leakage section (needs ``counts_path``). ``maps``: the 2-D maps plotted,
    "umap", "pca" or "none".
    ``cz_benchmarks``: also run the cz-benchmarks tasks where the package is installed."""
    emb_paths = _as_list(embeddings_path)
    counts_paths = _as_list(counts_path) if counts_path is not None else None
    cells = load_cells(emb_paths, [label] + ([batch] if batch else []), counts_paths)
    inputs = {"embeddings": [str(p) for p in emb_paths], "counts": [str(p) for p in counts_paths or []],
              "compare": [str(p) for p in compare_paths or []], "label": label, "batch": batch, "seed": seed}
    compared = None
    if compare_paths:
        compared = {" + ".join(inputs["embeddings"]): cells.embeddings}
        compared |= {str(p): read_aligned(p, cells.obs.index) for p in compare_paths}
        if len(compared) != len(compare_paths) + 1:
            raise InputError("--compare: each file may be given once, and not the --embeddings file itself")
    baselines = {}
    if esm2ce is not None:
        baselines["esm2ce"] = pd.concat(esm2ce).reindex(cells.obs.index).to_numpy(np.float32)
    section = homology_.for_cells(homology, cells, label, emb_paths) if homology is not None else None
    return evaluate_cells(cells.embeddings, cells.obs, label, inputs, batch=batch, counts=cells.counts, seed=seed,
                          output_dir=output_dir, source=str(emb_paths[0]), compared=compared, baselines=baselines,
                          homology=section, maps=maps, cz_benchmarks=cz_benchmarks)


def evaluate_cells(embeddings: np.ndarray, obs: pd.DataFrame, label: str, inputs: dict, *, batch: str | None = None,
                   counts: sp.csr_matrix | None = None, seed: int = 42, output_dir: str | os.PathLike | None = None,
                   source: str = "", compared: dict[str, np.ndarray] | None = None,
                   baselines: dict[str, np.ndarray] | None = None, homology: dict | None = None,
                   maps: str = "umap", cz_benchmarks: bool = True) -> dict:
    """The report on ``embeddings`` (cells x dim) for ``obs[label]``, beside the PCA of ``counts``
    (cells x genes, raw) when given; with ``output_dir``, also report.json, summary.md and the ``maps``
    ("umap", "pca" or "none") there.
    ``inputs`` is recorded as it is; ``source`` names the cells in errors. ``compared``: named
    representations of the same cells (the first the baseline), compared on identical folds.
    ``baselines``: more representations of the same cells scored beside (``esm2ce``).
    ``homology``: a computed homology section (``tfx.eval.homology``), recorded and plotted.
    ``cz_benchmarks``: also run the cz-benchmarks tasks (``report["cz_benchmarks"]``) where the
    package is installed; the report says when it is not, or when they were skipped."""
    check_report_dir(output_dir)
    labelled = obs[label].notna().to_numpy()
    labels = obs[label].astype(str).to_numpy()
    keep, dropped = probes.large_classes(labels[labelled])
    keep = np.flatnonzero(labelled)[keep]
    labels = labels[keep]
    if len(np.unique(labels)) < 2:
        sizes = obs[label].value_counts().head(5).to_dict()
        raise InputError(
            f"{source}: fewer than 2 classes of '{label}' have at least {probes.MIN_CLASS_CELLS} cells "
            f"(largest: {sizes}); evaluate more cells or pass another --label (label= in tfx.evaluate)"
        )
    batches = obs[batch].astype(str).to_numpy()[keep] if batch else None

    representations = {"embeddings": np.asarray(embeddings)[keep]}
    n_reps = 1 + (counts is not None) + len(baselines or {})
    plotted = output_dir is not None and maps != "none"
    bar = progress(total=n_reps * (1 + plotted) + 1 + bool(compared), desc="eval", unit="step")

    def step(what: str, result):
        bar.set_postfix_str(what, refresh=False)
        bar.update()
        return result

    if counts is not None:
        representations["pca_log_counts"] = pca_of_log_counts(counts[keep], seed=seed)
    representations |= {name: np.asarray(f)[keep] for name, f in (baselines or {}).items()}
    scores = {name: step(f"probes {name}", _score(features, labels, batches, seed))
              for name, features in representations.items()}

    plot_files = []
    output_dir = Path(output_dir) if output_dir is not None else None
    if plotted:
        layouts = {name: step(f"layout {name}", plots.layout_2d(features, seed, maps))
                   for name, features in representations.items()}
        for column, colours in [(label, labels)] + ([(batch, batches)] if batch else []):
            path = output_dir / f"{maps}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', column)}.png"
            plots.scatter_png(path, layouts, colours, f"coloured by {column}")
            plot_files.append(path.name)
    if output_dir is not None and homology is not None:
        homology_.plot_png(output_dir / "homology.png", homology)
        plot_files.append("homology.png")

    report = {
        "inputs": inputs,
        "cells": {"total": len(obs), "scored": len(keep), "classes": sorted(np.unique(labels).tolist()),
                  "dropped_classes": dropped, "unlabelled": int((~labelled).sum()),
                  "batches": sorted(np.unique(batches).tolist()) if batch else None},
        "method": {"folds": probes.N_FOLDS, "min_class_cells": probes.MIN_CLASS_CELLS,
                   "classifiers": "StandardScaler, then KNeighborsClassifier(k=5) or LogisticRegression",
                   "baseline": "PCA (50) of log1p counts per 10k over the 2000 most variable genes"},
        "representations": scores,
        "headline": _headline(scores),
        "plots": plot_files,
    }
    report["cz_benchmarks"] = step("cz-benchmarks",
                                   _cz_benchmarks(cz_benchmarks, embeddings, obs, label, batch, counts, seed))
    if homology is not None:
        report["homology"] = homology
    if compared:
        report["compare"] = step("compare", compare({name: np.asarray(f)[keep] for name, f in compared.items()},
                                                    labels, seed))
    bar.close()
    if output_dir is not None:
        with atomic_path(output_dir / "summary.md") as tmp:
            tmp.write_text(_markdown(report))
        with atomic_path(output_dir / "report.json") as tmp:  # last: its presence means the report is complete
            tmp.write_text(json.dumps(report, indent=2))
        _remove_stale_plots(output_dir, plot_files)
    return report


def _remove_stale_plots(output_dir: Path, drawn: list[str]) -> None:
    """An earlier report's plots that this one did not draw (other --maps, --batch or no --homology),
    in a directory the output check let this report replace: removed once the new report is whole."""
    for path in output_dir.glob("*.png"):  # (tfx.eval.run.REPORT's patterns; importing it would be a circle)
        if path.name not in drawn and re.fullmatch(r"(umap|pca)_[A-Za-z0-9_.-]+\.png|homology\.png", path.name):
            path.unlink()


def check_report_dir(output_dir: str | os.PathLike | None) -> None:
    """Before any work: the report goes in a directory, so a file there is refused (and kept)."""
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise InputError(f"--output {output_dir}: is a file; name a directory for the report")


def _cz_benchmarks(wanted: bool, embeddings, obs, label, batch, counts, seed) -> dict:
    installed = czbench.version()
    if wanted and installed:
        return czbench.run_tasks(embeddings, obs, label, batch=batch, counts=counts, seed=seed)
    why = ("skipped (--no-cz-benchmarks)" if not wanted else
           "not installed (pip install 'tfx[cz]')")
    return {"package": czbench.PACKAGE, "version": installed, "tasks": None,
            "note": f"{czbench.PACKAGE} {why}: only tfx's light probes above ran, the package's tasks and "
                    "baselines did not."}


def _as_list(paths: PathOrPaths) -> list:
    return list(paths) if isinstance(paths, (list, tuple)) else [paths]


def _score(features: np.ndarray, labels: np.ndarray, batches: np.ndarray | None, seed: int) -> dict:
    result = {"dim": int(features.shape[1]), "probes": probes.label_prediction(features, labels, seed),
              "silhouette_label": mixing.silhouette(features, labels, seed)}
    if batches is not None and len(np.unique(batches)) > 1:
        result["silhouette_batch"] = mixing.silhouette(features, batches, seed)
        result["batch_entropy"] = mixing.neighbourhood_entropy(features, batches)
        result["label_transfer"] = probes.label_transfer(features, labels, batches)
    return result


def _headline(scores: dict) -> dict:
    headline = {}
    extra = [(name, f"{name}_") for name in scores if name not in ("embeddings", "pca_log_counts")]
    for name, prefix in [("embeddings", ""), ("pca_log_counts", "pca_")] + extra:
        s = scores.get(name)
        headline[f"{prefix}knn_macro_f1"] = s["probes"]["knn"]["macro_f1"] if s else None
        headline[f"{prefix}logistic_macro_f1"] = s["probes"]["logistic"]["macro_f1"] if s else None
        if s and "label_transfer" in s:
            headline[f"{prefix}transfer_knn_macro_f1"] = s["label_transfer"]["knn_macro_f1"]
            headline[f"{prefix}batch_entropy"] = s["batch_entropy"]["mean"]
    return headline


def _markdown(report: dict) -> str:
    inputs, cells = report["inputs"], report["cells"]
    label, batch = inputs["label"], inputs["batch"]
    dropped = ", ".join(f"{k} ({v})" for k, v in cells["dropped_classes"].items()) or "none"
    lines = [
        f"# tfx eval: {label}",
        "",
        f"{cells['scored']} of {cells['total']} cells scored, {len(cells['classes'])} classes of `{label}`"
        + (f", {len(cells['batches'])} values of `{batch}`" if batch else "")
        + f". Classes under {report['method']['min_class_cells']} cells dropped: {dropped}.",
        "",
    ]
    header = ["representation", "kNN macro-F1", "kNN accuracy", "logistic macro-F1", "logistic accuracy",
              f"silhouette ({label})"]
    multi = any("label_transfer" in s for s in report["representations"].values())
    if multi:
        header += [f"silhouette ({batch})", f"{batch} entropy", "transfer kNN macro-F1", "transfer logistic macro-F1"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = {"embeddings": "embeddings", "pca_log_counts": "PCA of log counts (baseline)",
             "esm2ce": "ESM2-CE: pooled protein embeddings (baseline)"}
    for name, s in report["representations"].items():
        knn, logistic = s["probes"]["knn"], s["probes"]["logistic"]
        row = [f"{names[name]}, dim {s['dim']}", _fmt(knn["macro_f1"]), _fmt(knn["accuracy"]),
               _fmt(logistic["macro_f1"]), _fmt(logistic["accuracy"]), _fmt(s["silhouette_label"])]
        if multi:
            entropy = s["batch_entropy"]
            row += [_fmt(s["silhouette_batch"]), f"{_fmt(entropy['mean'])} (mixed: {_fmt(entropy['mixed'])})",
                    _fmt(s["label_transfer"]["knn_macro_f1"]), _fmt(s["label_transfer"]["logistic_macro_f1"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"{report['method']['folds']}-fold stratified CV on standardised features "
        f"({report['method']['classifiers']}): tfx's light probes, cz-benchmarks' label-prediction protocol without "
        f"its random forest, AUROC and Leiden clustering; baseline: {report['method']['baseline']}.",
    ]
    if multi:
        lines.append(f"Mixing: a good cross-{batch} embedding has a high {label} silhouette, a {batch} silhouette "
                     f"near 0 or below, a {batch} entropy near its mixed value, and a high transfer F1 "
                     f"(train on one {batch}, predict another).")
    lines += czbench.markdown(report["cz_benchmarks"])
    if "compare" in report:
        lines += _compare_markdown(report["compare"])
    if "homology" in report:
        lines += homology_.markdown(report["homology"])
    lines += ["", "Plots: " + ", ".join(report["plots"]), ""]
    return "\n".join(lines)


def _compare_markdown(c: dict) -> list[str]:
    lines = ["", f"## Compared with `{c['baseline']}` on identical folds", "",
             "| representation | classifier | macro-F1 difference per fold | mean | 95% bootstrap CI |", "|---|---|---|---|---|"]
    for name, by_clf in c["differences"].items():
        for clf, d in by_clf.items():
            folds = ", ".join(f"{x:+.3f}" for x in d["per_fold"])
            lines.append(f"| `{name}` | {clf} | {folds} | {d['mean']:+.3f} | {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f} |")
    lines += ["", f"Difference = representation minus baseline, on the same {c['folds']} stratified folds; the "
              f"interval resamples cells ({c['bootstrap']} times) of the out-of-fold predictions, both "
              "representations on the same resample. An interval that excludes 0 is a difference these cells "
              "support; one that spans 0 is not."]
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
