"""`tfx eval --compare`: representations of the same cells on identical folds, paired per-fold
differences and a bootstrap interval that tells a real difference from none."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from conftest import planted
from tfx.cli import main
from tfx.eval.compare import macro_f1


def _write(path, features, obs):
    anndata.AnnData(obs=obs, obsm={"embeddings": features.astype(np.float32)}).write_h5ad(path)
    return str(path)


def test_macro_f1_is_scikit_learns():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 5, 300), rng.integers(0, 6, 300)
    assert macro_f1(truth, predicted, 6) == f1_score(truth, predicted, average="macro")


def test_compare_tells_a_worse_representation_from_the_same_one(tmp_path, capsys):
    features, labels, _ = planted(classes=4, per_class=30)
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))])
    a = _write(tmp_path / "a.h5ad", features, obs)
    noisy = features + np.random.default_rng(1).normal(scale=4.0, size=features.shape)
    b = _write(tmp_path / "noisy.h5ad", noisy, obs)
    order = np.random.default_rng(2).permutation(len(obs))  # the same cells, stored in another order
    same = _write(tmp_path / "same.h5ad", features[order], obs.iloc[order])
    with threadpool_limits(1):
        assert main(["eval", "--embeddings", a, "--compare", b, same, "--label", "cell_type", "--no-cz-benchmarks",
                     "--maps", "none", "--output", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    c = report["compare"]
    assert c["baseline"] == a and list(c["differences"]) == [b, same]
    for clf in ("knn", "logistic"):
        # the baseline's folds are the report's: their mean is its macro-F1
        assert np.isclose(np.mean(c["macro_f1_per_fold"][a][clf]), report["representations"]["embeddings"]["probes"][clf]["macro_f1"])
        worse, identical = c["differences"][b][clf], c["differences"][same][clf]
        assert len(worse["per_fold"]) == 5 and worse["ci95"][1] < 0 and worse["mean"] < 0
        assert identical["per_fold"] == [0.0] * 5 and identical["ci95"] == [0.0, 0.0]
    out = capsys.readouterr().out
    assert f"{b} minus {a}: knn macro-F1 -" in out
    assert "Compared with" in (tmp_path / "report" / "summary.md").read_text()

    # tfx.evaluate(compare=[obsm keys]) gives the same comparison in a notebook
    import tfx

    adata = anndata.AnnData(obs=obs, obsm={"X_a": features.astype(np.float32), "X_noisy": noisy.astype(np.float32)})
    with threadpool_limits(1):
        api = tfx.evaluate(adata, rep="X_a", compare=["X_noisy"], cz_benchmarks=False)["compare"]
    assert api["differences"]["X_noisy"] == c["differences"][b]
    assert api["macro_f1_per_fold"]["X_a"] == c["macro_f1_per_fold"][a]


def test_compare_refuses_other_cells_in_one_line(tmp_path, capsys):
    features, labels, _ = planted(classes=2, per_class=12)
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))])
    a = _write(tmp_path / "a.h5ad", features, obs)
    fewer = _write(tmp_path / "fewer.h5ad", features[:-1], obs.iloc[:-1])
    assert main(["eval", "--embeddings", a, "--compare", fewer, "--label", "cell_type",
                 "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer.h5ad: its 71 cells are not the 72 cells of --embeddings" in err[0]
    assert not (tmp_path / "r" / "report.json").exists()
