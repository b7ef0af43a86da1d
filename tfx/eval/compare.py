"""Two or more representations of the same cells, side by side on identical folds: per-fold paired
differences of macro-F1 and a bootstrap confidence interval of the difference.

Each classifier predicts every cell once, out of fold (the report's 5 stratified folds, the same
seed); the interval resamples cells with replacement and recomputes both representations'
macro-F1 on the same resample, so it is paired.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from tfx.eval.probes import N_FOLDS, classifiers

N_BOOTSTRAP = 1000


def macro_f1(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in ``truth`` or ``predicted`` (integer codes), as scikit-learn's."""
    true = np.bincount(truth, minlength=n_classes)
    pred = np.bincount(predicted, minlength=n_classes)
    tp = np.bincount(truth[truth == predicted], minlength=n_classes)
    present = true + pred > 0
    return float(np.mean(2 * tp[present] / (true + pred)[present]))


def out_of_fold(features: np.ndarray, codes: np.ndarray, seed: int) -> dict[str, tuple[list[float], np.ndarray]]:
    """Per classifier: the macro-F1 of each fold, and every cell's out-of-fold prediction."""
    folds = StratifiedKFold(N_FOLDS, shuffle=True, random_state=seed).split(features, codes)
    folds, n_classes = list(folds), int(codes.max()) + 1
    results = {}
    for name, clf in classifiers().items():
        predicted, per_fold = np.empty_like(codes), []
        for train, test in folds:
            predicted[test] = clone(clf).fit(features[train], codes[train]).predict(features[test])
            per_fold.append(macro_f1(codes[test], predicted[test], n_classes))
        results[name] = (per_fold, predicted)
    return results


def compare(representations: dict[str, np.ndarray], labels: np.ndarray, seed: int = 0,
            n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """The first representation is the baseline; each other one is compared with it."""
    _, codes = np.unique(labels, return_inverse=True)
    n_classes = int(codes.max()) + 1
    runs = {name: out_of_fold(features, codes, seed) for name, features in representations.items()}
    base_name, *others = runs
    resamples = np.random.default_rng(seed).integers(0, len(codes), size=(n_bootstrap, len(codes)))
    result = {"baseline": base_name, "folds": N_FOLDS, "bootstrap": n_bootstrap, "seed": seed,
              "macro_f1_per_fold": {name: {clf: r[0] for clf, r in run.items()} for name, run in runs.items()},
              "differences": {}}
    for name in others:
        result["differences"][name] = {}
        for clf, (per_fold, predicted) in runs[name].items():
            base_fold, base_pred = runs[base_name][clf]
            diffs = [b - a for a, b in zip(base_fold, per_fold)]
            boot = [macro_f1(codes[i], predicted[i], n_classes) - macro_f1(codes[i], base_pred[i], n_classes)
                    for i in resamples]
            result["differences"][name][clf] = {
                "per_fold": diffs, "mean": float(np.mean(diffs)),
                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            }
    return result
