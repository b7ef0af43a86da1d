"""Label prediction from a cell representation, as the cz-benchmarks metadata-label task does it:
classes under ``MIN_CLASS_CELLS`` cells dropped, 5-fold stratified CV, standardised features,
kNN and logistic regression, macro-F1 and accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

MIN_CLASS_CELLS = 10
N_FOLDS = 5


def classifiers() -> dict[str, Pipeline]:
    return {
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier()),
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    }


def large_classes(labels: np.ndarray, min_cells: int = MIN_CLASS_CELLS) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of cells whose class has at least ``min_cells`` cells, and the classes dropped (with sizes)."""
    sizes = pd.Series(labels).value_counts()
    small = sizes[sizes < min_cells]
    return ~np.isin(labels, small.index), {str(k): int(v) for k, v in small.items()}


def label_prediction(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Mean and standard deviation over the folds of macro-F1 and accuracy, per classifier."""
    folds = StratifiedKFold(N_FOLDS, shuffle=True, random_state=seed)
    scoring = {"macro_f1": "f1_macro", "accuracy": "accuracy"}
    results = {}
    for name, clf in classifiers().items():
        scores = cross_validate(clf, features, labels, cv=folds, scoring=scoring)
        results[name] = {metric: float(np.mean(scores[f"test_{metric}"])) for metric in scoring}
        results[name] |= {f"{metric}_std": float(np.std(scores[f"test_{metric}"])) for metric in scoring}
    return results


def label_transfer(features: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> dict:
    """Train on one batch (species), predict another, for every ordered pair; scored on the test
    cells whose label the training batch has."""
    pairs = []
    for train in np.unique(batches):
        for test in np.unique(batches):
            if train == test:
                continue
            fit_mask, test_mask = batches == train, batches == test
            test_mask &= np.isin(labels, np.unique(labels[fit_mask]))
            if len(np.unique(labels[fit_mask])) < 2 or not test_mask.any():
                continue
            pair = {"train": str(train), "test": str(test), "test_cells": int(test_mask.sum())}
            for name, clf in classifiers().items():
                predicted = clf.fit(features[fit_mask], labels[fit_mask]).predict(features[test_mask])
                truth = labels[test_mask]
                pair[f"{name}_macro_f1"] = float(f1_score(truth, predicted, labels=np.unique(truth), average="macro"))
                pair[f"{name}_accuracy"] = float(accuracy_score(truth, predicted))
            pairs.append(pair)
    summary = {f"{name}_macro_f1": float(np.mean([p[f"{name}_macro_f1"] for p in pairs])) if pairs else None
               for name in classifiers()}
    return {"pairs": pairs, **summary}
