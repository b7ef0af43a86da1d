"""`tfx eval`: probes find planted structure and nothing in shuffled labels, mixing metrics move the
right way, and the report, summary and plots are written; bad input gets a one-line error."""

from __future__ import annotations

import json
import logging

import anndata
import numpy as np
import pytest

from conftest import planted
from tfx.errors import InputError
from tfx.eval import evaluate
from tfx.eval.mixing import neighbourhood_entropy, silhouette
from tfx.eval.plots import layout_2d
from tfx.eval.probes import label_prediction, label_transfer, large_classes

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_probes_find_planted_labels_and_nothing_in_shuffled_ones():
    features, labels, _ = planted()
    found = label_prediction(features, labels)
    shuffled = label_prediction(features, np.random.default_rng(1).permutation(labels))
    for clf in ("knn", "logistic"):
        assert found[clf]["macro_f1"] > 0.9 and found[clf]["accuracy"] > 0.9
        assert shuffled[clf]["macro_f1"] < 0.4  # chance is 0.25 for 4 balanced classes


def test_classes_under_ten_cells_are_dropped():
    labels = np.array(["a"] * 12 + ["b"] * 9 + ["c"] * 10)
    keep, dropped = large_classes(labels)
    assert dropped == {"b": 9} and keep.sum() == 22 and not keep[12:21].any()


def test_mixing_metrics_tell_mixed_from_separated_species():
    mixed, labels, species = planted(species_offset=0.0)
    separated, _, _ = planted(species_offset=3.0)
    assert silhouette(separated, species) > 0.2 > 0.05 > silhouette(mixed, species)
    assert silhouette(mixed, labels) > silhouette(separated, labels)
    mixed_entropy, separated_entropy = neighbourhood_entropy(mixed, species), neighbourhood_entropy(separated, species)
    assert mixed_entropy["mean"] > 0.8 > 0.3 > separated_entropy["mean"]
    assert mixed_entropy["mixed"] == pytest.approx(1.0)  # three equal species
    transfer_mixed = label_transfer(mixed, labels, species)
    transfer_separated = label_transfer(separated, labels, species)
    assert len(transfer_mixed["pairs"]) == 6  # every ordered pair of species
    assert transfer_mixed["knn_macro_f1"] > 0.9 and transfer_mixed["logistic_macro_f1"] > 0.9
    assert transfer_separated["knn_macro_f1"] < transfer_mixed["knn_macro_f1"] - 0.2


def test_evaluate_writes_the_report_summary_and_plots(eval_atlas, tmp_path):
    out = tmp_path / "report"
    report = evaluate(eval_atlas["embeddings"], "cell_type", batch="species", counts_path=eval_atlas["counts"],
                      output_dir=out, maps="pca",  # UMAP: the quickstart test (its numba compile is ~20 s)
                      cz_benchmarks=False)  # tests/test_czbench.py runs the package's tasks on these cells

    headline = report["headline"]
    assert headline["knn_macro_f1"] > 0.9 and headline["logistic_macro_f1"] > 0.9
    assert 0.5 < headline["pca_knn_macro_f1"] <= 1 and 0.5 < headline["pca_logistic_macro_f1"] <= 1
    # planted embeddings share the types across species; the baseline's species share no gene
    assert headline["transfer_knn_macro_f1"] > 0.9 > headline["pca_transfer_knn_macro_f1"]
    assert headline["batch_entropy"] > headline["pca_batch_entropy"]
    assert report["cells"]["total"] == 400 and report["cells"]["batches"] == ["synth_alpha", "synth_beta"]

    assert json.loads((out / "report.json").read_text()) == report
    summary = (out / "summary.md").read_text()
    assert "PCA of log counts" in summary and "kNN macro-F1" in summary
    assert sorted(report["plots"]) == ["pca_cell_type.png", "pca_species.png"]
    for name in report["plots"]:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.json", "summary.md", *report["plots"]])
    # written again without maps (as --overwrite lets it): no plot of the earlier report is left
    again = evaluate(eval_atlas["embeddings"], "cell_type", output_dir=out, maps="none", cz_benchmarks=False)
    assert again["plots"] == [] and sorted(p.name for p in out.iterdir()) == ["report.json", "summary.md"]


def test_bad_input_gets_a_one_line_error_naming_the_file(eval_atlas, tmp_path):
    emb, counts = eval_atlas["embeddings"], eval_atlas["counts"]
    few = eval_atlas["root"] / "few.h5ad"
    adata = anndata.read_h5ad(emb[0])
    adata[adata.obs["cell_type"].isin(adata.obs["cell_type"].cat.categories[:1])].write_h5ad(few)
    cases = [
        (dict(embeddings_path=counts[0], label="cell_type"), counts[0], "no obsm\\['embeddings'\\]"),
        (dict(embeddings_path=emb[0], label="tissue"), emb[0], "no column 'tissue'"),
        (dict(embeddings_path=emb[0], label="cell_type", batch="donor"), emb[0], "no column 'donor'"),
        (dict(embeddings_path=few, label="cell_type"), few, "fewer than 2 classes"),
        (dict(embeddings_path=emb[0], label="cell_type", counts_path=counts[1]), counts[1], "do not match"),
        (dict(embeddings_path=emb, label="cell_type", counts_path=counts[:1]), None, "one --counts file per"),
    ]
    for kwargs, named, message in cases:
        with pytest.raises(InputError, match=message) as err:
            evaluate(**kwargs, output_dir=tmp_path / "out")
        assert "\n" not in str(err.value) and (named is None or str(named) in str(err.value))
    assert not (tmp_path / "out").exists()


def test_plots_fall_back_to_pca_when_umap_cannot_run(caplog):
    with caplog.at_level(logging.WARNING):
        coords, method = layout_2d(np.random.default_rng(0).normal(size=(2, 8)))  # 3 cells: UMAP compiles first
    assert method == "PCA" and coords.shape == (2, 2) and np.isfinite(coords).all()
    assert "UMAP failed" in caplog.text


def test_quickstart_with_too_few_cells_for_eval_is_refused_before_training(tmp_path, capsys):
    """It was refused by eval, after the pretraining and inference, with a fix (--label) quickstart lacks."""
    from tfx.cli import main

    assert main(["quickstart", "--output", str(tmp_path / "q"), "--species", "1", "--cells", "30", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cells 30: the atlas has fewer than 2 cell types of 10 cells or more" in err[0], err
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["atlas"]  # nothing trained


@pytest.mark.slow
def test_quickstart_runs_every_step_and_reports(tmp_path, capsys):
    from tfx.cli import main

    assert main(["quickstart", "--output", str(tmp_path), "--species", "2", "--cells", "120", "--steps", "8"]) == 0
    printed = capsys.readouterr().out
    for step in ("synth", "shard", "pretrain", "infer", "eval", "prompt", "done"):
        assert f"] {step}" in printed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    # what the field reports: the package's tasks, the prompting AUROC on the atlas's true programmes
    assert report["cz_benchmarks"]["tasks"] is not None or "not installed" in report["cz_benchmarks"]["note"]
    prompting = report["prompting"]
    assert len(prompting["types"]) == 8 and 0 <= prompting["mean"]["auroc"] <= 1
    assert 0 < prompting["mean"]["frequency_auroc"] < 1 and prompting["mean"]["effective_cells"] >= 1
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## What this quickstart shows" in summary and "trained for 8 steps on CPU" in summary
    assert f"{prompting['mean']['auroc']:.2f}" in summary and f"{report['headline']['logistic_macro_f1']:.2f}" in summary
    assert 0 <= report["headline"]["knn_macro_f1"] <= 1 and report["headline"]["pca_knn_macro_f1"] > 0.5
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["umap_cell_type.png", "umap_species.png"]
    for species in ("synth_alpha", "synth_beta"):
        assert len(list((tmp_path / "shards" / species).glob("*.tar"))) == 4
        assert anndata.read_h5ad(tmp_path / "embeddings" / f"{species}.h5ad").obsm["embeddings"].shape == (120, 64)
