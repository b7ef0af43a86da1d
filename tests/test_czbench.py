"""`tfx eval` runs the cz-benchmarks tasks through the package (the `cz` extra), beside the package's
own baselines; its label prediction agrees with tfx's light probes on the same folds; without the
package the light probes run alone and the report says so."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import planted
from tfx.eval import czbench, evaluate
from tfx.eval.probes import label_prediction

pytestmark = [pytest.mark.skipif(czbench.version() is None, reason="the cz extra is not installed"),
              pytest.mark.usefixtures("one_blas_thread"),
              pytest.mark.slow]  # each process pays the package's import (jax, scib-metrics: ~8 s) and numba compiles


def _metric(results: list[dict], metric: str, classifier: str) -> float:
    return next(m["value"] for m in results if m["metric"] == metric and m["params"]["classifier"] == classifier)


def test_label_prediction_agrees_with_the_light_probes_on_the_same_folds():
    """Same seed, same stratified folds: kNN is the same classifier (its scaler's centring does not
    move distances), so the package's per-classifier means equal the light probes'. Logistic
    regression differs only in the package's scaler (no centring: the unpenalised intercept absorbs
    it) and its default iteration cap, so it agrees to a small tolerance."""
    features, labels, _ = planted(species_offset=0.5, per_class=25)
    features = features + np.random.default_rng(1).normal(scale=2.0, size=features.shape)  # room to err
    obs = pd.DataFrame({"cell_type": labels})
    light = label_prediction(features, labels, seed=7)
    cz = czbench.run_tasks(features, obs, "cell_type", seed=7)["tasks"]["label_prediction"]["embeddings"]
    assert 0.5 < light["knn"]["macro_f1"] < 0.99  # neither trivial nor hopeless: a fold change shows
    assert _metric(cz, "mean_fold_f1", "knn") == pytest.approx(light["knn"]["macro_f1"], abs=1e-9)
    assert _metric(cz, "mean_fold_accuracy", "knn") == pytest.approx(light["knn"]["accuracy"], abs=1e-9)
    assert _metric(cz, "mean_fold_f1", "lr") == pytest.approx(light["logistic"]["macro_f1"], abs=0.02)
    other_folds = czbench.run_tasks(features, obs, "cell_type", seed=8)["tasks"]["label_prediction"]["embeddings"]
    assert _metric(other_folds, "mean_fold_f1", "knn") != pytest.approx(light["knn"]["macro_f1"], abs=1e-9)


def test_eval_reports_every_task_with_the_package_baselines_and_version(eval_atlas, tmp_path):
    out = tmp_path / "report"
    report = evaluate(eval_atlas["embeddings"], "cell_type", batch="species", counts_path=eval_atlas["counts"],
                      output_dir=out, maps="none")
    cz = report["cz_benchmarks"]
    assert cz["version"] == importlib.metadata.version("cz-benchmarks") and cz["seed"] == 42
    tasks = cz["tasks"]
    assert set(tasks) == {"label_prediction", "clustering", "embedding", "batch_integration",
                          "cross_species_integration", "cross_species_label_prediction"}
    assert set(tasks["label_prediction"]) == {"embeddings", "raw_expression"}
    assert set(tasks["clustering"]) == set(tasks["embedding"]) == {"embeddings", "pca"}
    # Planted embeddings share the cell types across species; the package's PCA of each species'
    # own genes cannot mix species at all.
    head = cz["headline"]
    assert head["cross_species_label_prediction f1"]["embeddings"] > 0.9
    assert head["batch_integration entropy_per_cell"]["embeddings"] > head["batch_integration entropy_per_cell"]["pca"]
    assert head["clustering adjusted_rand_index"]["embeddings"] > 0.5
    assert json.loads((out / "report.json").read_text())["cz_benchmarks"] == cz
    summary = (out / "summary.md").read_text()
    assert f"cz-benchmarks {cz['version']} tasks" in summary and "### cross species label prediction" in summary


def test_cross_species_prediction_uses_the_classes_every_species_has_enough_of():
    """The package's cross-species task fails on classes a species has few cells of; they are left
    out (its label-prediction rule, 10+ cells), and with fewer than 2 such classes it is not run."""
    features, labels, species = planted(classes=3, per_class=12)
    small = (species == "sp1") & (labels == "type0")
    keep = ~small | (np.cumsum(small) <= 4)  # sp1 keeps 4 cells of type0
    obs = pd.DataFrame({"cell_type": labels[keep], "species": species[keep]})
    tasks = czbench.run_tasks(features[keep], obs, "cell_type", seed=0)["tasks"]
    results = tasks["cross_species_label_prediction"]["embeddings"]
    assert {m["params"]["test_species"] for m in results} == {"sp0", "sp1", "sp2"}
    assert all("error" not in t for t in tasks.values())
    few = obs.assign(cell_type=np.where(obs["cell_type"] == "type2", "type2", obs["cell_type"] + obs["species"]))
    tasks = czbench.run_tasks(features[keep], few, "cell_type", seed=0)["tasks"]
    assert tasks["cross_species_label_prediction"] == {
        "error": "fewer than 2 classes of 'cell_type' have 10+ cells in every species"}
    assert "error" not in tasks["cross_species_integration"]


def test_a_baseline_the_package_cannot_make_fails_its_tasks_only():
    """40 cells are too few for the package's 50-component PCA: the tasks using it record the
    error, the others report."""
    import scipy.sparse as sp

    features, labels, _ = planted(classes=2, per_class=20)
    features, labels = features[:40], labels[:40]
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, size=(40, 300)).astype(np.float32))
    tasks = czbench.run_tasks(features, pd.DataFrame({"cell_type": labels}), "cell_type", counts=counts)["tasks"]
    assert set(tasks["label_prediction"]) == {"embeddings", "raw_expression"}
    assert "n_components=50" in tasks["clustering"]["error"] and "error" in tasks["embedding"]


BLOCK_CZ = """
import importlib.abc, sys
class NoCz(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "czbenchmarks" or name.startswith("czbenchmarks."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoCz())
from tfx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_package_the_light_probes_run_and_the_report_says_so(eval_atlas, tmp_path):
    """A machine without the extra, made by hiding the installed package from the import system."""
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-c", BLOCK_CZ, "eval", "--embeddings", *map(str, eval_atlas["embeddings"]),
                          "--label", "cell_type", "--maps", "none", "--output", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["cz_benchmarks"]["tasks"] is None and "not installed" in report["cz_benchmarks"]["note"]
    assert report["headline"]["knn_macro_f1"] > 0.9  # the light probes ran
    assert "cz-benchmarks not installed (pip install 'tfx[cz]')" in run.stdout
    assert "not installed" in (out / "summary.md").read_text()
