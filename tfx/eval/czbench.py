"""The cz-benchmarks tasks (CZI's package, the optional ``cz`` extra) on the same cells as the
light probes, each beside the package's own baselines.

Tasks that apply: label prediction (baseline: the raw expression matrix), clustering and
embedding (baseline: the package's PCA workflow), batch integration with a batch column, and,
with several species, cross-species integration and label prediction (no baseline in the package).
Baselines need the counts; without them the tasks run on the embeddings alone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

PACKAGE = "cz-benchmarks"
SPECIES_COLUMN = "species"
MIN_CLASS_CELLS = 10  # the package's own minimum class size for label prediction


def version() -> str | None:
    """The installed cz-benchmarks version, or None without the extra."""
    try:
        found = importlib.util.find_spec("czbenchmarks") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as none
        found = False
    return importlib.metadata.version(PACKAGE) if found else None


@contextlib.contextmanager
def _quiet():
    """The package and its dependencies (scanpy, jax) log and warn at INFO; tfx's output stays tfx's."""
    loggers = [logging.getLogger(name) for name in ("czbenchmarks", "jax", "absl")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no probing for accelerators jax was not built for
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _metrics(results) -> list[dict]:
    return [{"metric": r.metric_type.value, "value": float(r.value), **({"params": r.params} if r.params else {})}
            for r in results]


def _organisms(names: list[str]):
    """cz-benchmarks' Organism for each species it knows; other species (synthetic, new) by name,
    which its cross-species tasks use only as a label."""
    from czbenchmarks.datasets.types import Organism

    known = {o.value[0]: o for o in Organism}
    return [known.get(n, n) for n in names], all(n in known for n in names)


def _input(model, organisms_valid: bool, **fields):
    # Species outside the package's Organism enum cannot pass its validation; they are labels only.
    return model(**fields) if organisms_valid else model.model_construct(**fields)


def run_tasks(embeddings: np.ndarray, obs: pd.DataFrame, label: str, *, batch: str | None = None,
              counts: sp.csr_matrix | None = None, seed: int = 42) -> dict:
    """{package, version, seed, tasks: {task: {"embeddings": [metrics], "<baseline>": [metrics]}}}
    on cells whose ``label`` is known. ``counts`` (cells x genes, raw) adds the baselines."""
    with _quiet():
        from czbenchmarks.tasks import (
            BatchIntegrationTask, BatchIntegrationTaskInput, ClusteringTask, ClusteringTaskInput,
            CrossSpeciesIntegrationTask, CrossSpeciesIntegrationTaskInput, CrossSpeciesLabelPredictionTask,
            CrossSpeciesLabelPredictionTaskInput, EmbeddingTask, EmbeddingTaskInput, MetadataLabelPredictionTask,
            MetadataLabelPredictionTaskInput)
        from czbenchmarks.tasks.task import PCABaselineInput

        known = obs[label].notna().to_numpy()
        emb = np.asarray(embeddings, dtype=np.float32)[known]
        obs = obs[known].reset_index(drop=True)
        labels = obs[label].astype(str)
        expression = counts[known] if counts is not None else None
        make_baseline = {  # by the package, from the same cells' counts; each made once, when first asked
            "raw_expression": lambda: MetadataLabelPredictionTask(random_seed=seed).compute_baseline(expression),
            "pca": lambda: ClusteringTask(random_seed=seed).compute_baseline(
                expression, PCABaselineInput(n_top_genes=max(100, min(3000, expression.shape[1])))),
        }
        baselines: dict = {}
        tasks: dict[str, dict] = {}

        def run(name: str, task, inputs, features=emb, baseline: str | None = None):
            try:  # inside: a baseline the package cannot make on these cells fails its task only
                tasks[name] = {"embeddings": _metrics(task.run(features, inputs))}
                if baseline and expression is not None:
                    if baseline not in baselines:
                        baselines[baseline] = make_baseline[baseline]()
                    tasks[name][baseline] = _metrics(task.run(baselines[baseline], inputs))
            except Exception as err:  # one task the package cannot run on these cells leaves the others
                tasks[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}

        run("label_prediction", MetadataLabelPredictionTask(random_seed=seed),
            MetadataLabelPredictionTaskInput(labels=labels), baseline="raw_expression")
        run("clustering", ClusteringTask(random_seed=seed), ClusteringTaskInput(obs=obs, input_labels=labels),
            baseline="pca")
        run("embedding", EmbeddingTask(random_seed=seed), EmbeddingTaskInput(input_labels=labels), baseline="pca")
        if batch and obs[batch].nunique() > 1:
            run("batch_integration", BatchIntegrationTask(random_seed=seed),
                BatchIntegrationTaskInput(batch_labels=obs[batch].astype(str), labels=labels), baseline="pca")
        species = obs[SPECIES_COLUMN].astype(str) if SPECIES_COLUMN in obs else None
        if species is not None and species.nunique() > 1:
            names = list(dict.fromkeys(species))
            # The package's cross-species tasks neither drop small classes nor skip classes a species
            # lacks; its own label-prediction rule (>= MIN_CLASS_CELLS cells) is applied in every species.
            sizes = pd.crosstab(labels, species)
            shared = sizes.index[(sizes >= MIN_CLASS_CELLS).all(axis=1)]
            keep = labels.isin(shared).to_numpy()
            organisms, valid = _organisms(names)

            def per_species(mask):
                return ([emb[mask & (species == n).to_numpy()] for n in names],
                        [labels[mask & (species == n).to_numpy()].reset_index(drop=True) for n in names])

            parts, part_labels = per_species(np.ones(len(labels), dtype=bool))
            run("cross_species_integration", CrossSpeciesIntegrationTask(random_seed=seed),
                _input(CrossSpeciesIntegrationTaskInput, valid, labels=part_labels, organism_list=organisms), parts)
            parts, part_labels = per_species(keep)
            if len(shared) < 2:
                tasks["cross_species_label_prediction"] = {
                    "error": f"fewer than 2 classes of '{label}' have {MIN_CLASS_CELLS}+ cells in every species"}
            else:
                run("cross_species_label_prediction", CrossSpeciesLabelPredictionTask(random_seed=seed),
                    _input(CrossSpeciesLabelPredictionTaskInput, valid, labels=part_labels, organisms=organisms,
                           sample_ids=None, aggregation_method="none", n_folds=5), parts)
    section = {"package": PACKAGE, "version": version(), "seed": seed, "tasks": tasks}
    return section | {"headline": headline(section)}


# Each task's headline: the metric the field quotes, over the classifiers' mean where there are several.
HEADLINE = {"label_prediction": "mean_fold_f1", "clustering": "adjusted_rand_index", "embedding": "silhouette_score",
            "batch_integration": "entropy_per_cell", "cross_species_integration": "entropy_per_cell",
            "cross_species_label_prediction": "f1"}


def headline(section: dict) -> dict[str, dict[str, float]]:
    """{task: {representation: value}}: the task's headline metric; for cross-species label
    prediction, the mean over ordered pairs of different species."""
    out = {}
    for task, by_rep in (section.get("tasks") or {}).items():
        if "error" in by_rep:
            continue
        metric = HEADLINE[task]
        out[f"{task} {metric}"] = {rep: float(np.mean([m["value"] for m in results if m["metric"] == metric
                                                      and "MEAN" in (m.get("params") or {}).get("classifier", "MEAN")]))
                                   for rep, results in by_rep.items()}
    return out


def markdown(section: dict) -> list[str]:
    """summary.md's cz-benchmarks part: a table per task, a row per representation (and classifier
    or species pair), a column per metric. Cross-species pairs show the classifiers' mean only."""
    if not section.get("tasks"):
        return ["", f"## {PACKAGE}", "", section["note"]]
    lines = ["", f"## {PACKAGE} {section['version']} tasks (seed {section['seed']})", "",
             "Each task as the package runs it, on the embeddings and on the package's own baselines of the same "
             "cells (label prediction: the raw expression matrix; clustering, embedding, batch integration: its "
             "PCA workflow). Cross-species tasks have no baseline in the package. Within one species (and in "
             "label prediction) a figure is the mean over 5 folds. Every figure, per classifier and species pair, "
             "is in report.json."]
    for task, by_rep in section["tasks"].items():
        if "error" in by_rep:
            lines += ["", f"### {task.replace('_', ' ')}", "", f"Not run on these cells: {by_rep['error']}"]
            continue
        rows: dict[str, dict[str, float]] = {}
        for rep, results in by_rep.items():
            for m in results:
                params = m.get("params") or {}
                if "train_species" in params and not params["classifier"].startswith("MEAN"):
                    continue
                key = ", ".join([rep] + [f"{k} {v}" for k, v in params.items()])
                rows.setdefault(key, {})[m["metric"].removeprefix("mean_fold_")] = m["value"]
        metrics = list(dict.fromkeys(name for row in rows.values() for name in row))
        lines += ["", f"### {task.replace('_', ' ')}", "", "| representation | " + " | ".join(metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        lines += [f"| {key} | " + " | ".join(f"{row[m]:.3f}" if m in row else "" for m in metrics) + " |"
                  for key, row in rows.items()]
    return lines
