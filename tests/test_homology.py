"""`tfx eval --homology`: on a synthetic two-species atlas with a checkpoint that knows species alpha
only, the report finds synth's orthologs as close homologs, computes each held-out cell's homolog
share from its counts, bins every held-out cell, writes its files; bad use gets a one-line error."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from tfx.checkpoint import load_checkpoint, save_checkpoint
from tfx.cli import build_parser, main
from tfx.errors import InputError
from tfx.eval.homology import homolog_share, load_genes, nearest_similarity
from tfx.recipe import compose
from tfx.recipe.build import build
from tfx.synth import synth_atlas
from tfx.vocab import write_gene_embeddings

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Synth alpha + beta; an untrained tiny checkpoint whose vocabulary is alpha's; cell embeddings of
    both species (beta through --species-embedding, as a held-out species is embedded); the report."""
    root = tmp_path_factory.mktemp("homology")
    atlas = synth_atlas(root / "atlas", species=2, cells=200, genes=300, seed=0)["species"]
    alpha, beta = atlas["synth_alpha"], atlas["synth_beta"]
    made = build(compose("pretrain/tiny", ["data.source=h5ad", f"data.files=[{alpha['h5ad']}]",
                                           f"vocab.embeddings=[{alpha['gene_h5']}]", f"output_dir={root / 'run'}",
                                           "trainer.accelerator=cpu"]))
    ckpt = save_checkpoint(made.checkpoint, root / "ckpt")
    embeddings = {}
    for name, files, extra in [("alpha", alpha, []), ("beta", beta, ["--species-embedding", beta["gene_h5"]])]:
        embeddings[name] = root / f"{name}_emb.h5ad"
        assert main(["infer", "--checkpoint", str(ckpt), "--data", files["h5ad"], "--output", str(embeddings[name]),
                     "--device", "cpu", *extra]) == 0
    args = ["eval", "--embeddings", str(embeddings["alpha"]), str(embeddings["beta"]),
            "--counts", alpha["h5ad"], beta["h5ad"], "--label", "cell_type", "--checkpoint", str(ckpt), "--maps", "none",
            "--no-cz-benchmarks"]
    return {"root": root, "alpha": alpha, "beta": beta, "ckpt": ckpt, "args": args}


@pytest.fixture(scope="module")
def report(run):
    out = run["root"] / "report"
    with redirect_stdout(io.StringIO()) as printed:
        code = main([*run["args"], "--homology", run["beta"]["gene_h5"], "--output", str(out)])
    assert code == 0
    return out, json.loads((out / "report.json").read_text()), printed.getvalue()


def test_orthologs_are_the_close_homologs(run, report):
    genes = load_genes(load_checkpoint(run["ckpt"]), run["beta"]["gene_h5"])
    beta = anndata.read_h5ad(run["beta"]["h5ad"])
    assert genes.genes == list(beta.var["ensembl_id"]) and genes.excluded == 0
    assert genes.training_genes == list(anndata.read_h5ad(run["alpha"]["h5ad"], backed="r").var["ensembl_id"])
    similarity = nearest_similarity(genes.embeddings, genes.training_embeddings)
    ortholog = (beta.var["ortholog_group"].astype(str) != "").to_numpy()
    assert 0 < ortholog.sum() < len(ortholog)
    # synth: an ortholog is its group vector + 0.3 species noise; specific genes are fresh vectors
    assert np.median(similarity[ortholog]) > 0.85 > 0.8 > np.quantile(similarity[~ortholog], 0.9)
    assert np.mean(similarity[ortholog] >= 0.8) > 0.9

    section = report[1]["homology"]
    assert section["threshold"] == 0.8
    assert section["genes"] == {"held_out": 300, "training": 300, "excluded_from_training": 0,
                                "close_homolog": int((similarity >= 0.8).sum()),
                                "close_homolog_share": pytest.approx(float((similarity >= 0.8).mean()))}
    q = section["nn_similarity"]["quantiles"]
    assert q["q00"] == pytest.approx(similarity.min()) and q["q50"] == pytest.approx(np.median(similarity))
    assert sum(section["nn_similarity"]["histogram"]["counts"]) == 300


def test_homolog_share_is_each_cells_counts_on_close_homolog_genes(run, report):
    genes = load_genes(load_checkpoint(run["ckpt"]), run["beta"]["gene_h5"])
    similarity = nearest_similarity(genes.embeddings, genes.training_embeddings)
    beta = anndata.read_h5ad(run["beta"]["h5ad"])
    share = homolog_share(sp.csr_matrix(beta.X), beta.var["ensembl_id"].to_numpy(), genes, similarity)
    close = similarity >= 0.8  # the gene file's order is var's (checked above)
    x = beta.X.toarray()
    for cell in (0, 57, 199):
        assert share[cell] == pytest.approx(x[cell, close].sum() / x[cell].sum())
    assert ((share >= 0) & (share <= 1)).all() and share.std() > 0.01

    section = report[1]["homology"]
    assert section["cells"] == {"training": 200, "held_out": 200, "without_counts": 0, "scored": 200}
    q = section["homolog_share"]["quantiles"]
    assert q["q00"] == pytest.approx(share.min()) and q["q100"] == pytest.approx(share.max())
    assert q["q50"] == pytest.approx(np.median(share))


def test_transfer_accuracy_per_share_bin_covers_every_held_out_cell(report):
    out, full, _ = report
    section = full["homology"]
    assert set(section["transfer"]) == {"knn", "logistic"}
    for t in section["transfer"].values():
        bins = t["bins"]
        assert 2 <= len(bins) <= 5 and sum(b["cells"] for b in bins) == 200
        edges = [bins[0]["share_from"]] + [b["share_to"] for b in bins]
        assert edges == sorted(edges) and 0 <= edges[0] and edges[-1] <= 1
        assert all(0 <= b["accuracy"] <= 1 for b in bins)
        assert t["accuracy"] == pytest.approx(sum(b["accuracy"] * b["cells"] for b in bins) / 200)
    assert "homology.png" in full["plots"]
    png = (out / "homology.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    summary = (out / "summary.md").read_text()
    assert "## Homology" in summary and "homolog share bin" in summary


def test_the_cli_prints_one_homology_line_and_parses_the_threshold(report):
    lines = [line for line in report[2].splitlines() if line.startswith("homology:")]
    assert len(lines) == 1 and "cosine >= 0.8)" in lines[0] and "lowest" in lines[0] and "highest" in lines[0]
    args = build_parser().parse_args(["eval", "--embeddings", "e.h5ad", "--output", "r", "--homology", "g.h5",
                                      "--homology-threshold", "0.95"])
    assert args.homology == "g.h5" and args.homology_threshold == 0.95


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_bad_use_gets_a_one_line_error(run, tmp_path, capsys):
    beta = run["beta"]["gene_h5"]
    out = tmp_path / "out"
    no_checkpoint = [a for a in run["args"] if a not in ("--checkpoint", str(run["ckpt"]))]
    assert main([*no_checkpoint, "--homology", beta, "--output", str(out)]) == 2
    assert "--homology" in (err := _error(capsys)) and "--checkpoint" in err
    for threshold in ("0", "1.5", "nan"):
        assert main([*run["args"], "--homology", beta, "--homology-threshold", threshold, "--output", str(out)]) == 2
        assert "--homology-threshold" in capsys.readouterr().err

    narrow = tmp_path / "narrow_gene.h5"
    genes = load_genes(load_checkpoint(run["ckpt"]), beta)
    write_gene_embeddings(narrow, genes.genes, genes.embeddings[:, :8])
    assert main([*run["args"], "--homology", str(narrow), "--output", str(out)]) == 2
    assert "dimension 8" in _error(capsys)

    stranger = tmp_path / "stranger_gene.h5"  # a species none of the counts files is
    write_gene_embeddings(stranger, [f"ENSSTRANGER{i:06d}" for i in range(50)], genes.embeddings[:50])
    with pytest.raises(InputError, match="no cell is held out"):
        from tfx.eval import evaluate
        evaluate([run["root"] / "alpha_emb.h5ad", run["root"] / "beta_emb.h5ad"], "cell_type", output_dir=out,
                 counts_path=[run["alpha"]["h5ad"], run["beta"]["h5ad"]], homology=load_genes(load_checkpoint(run["ckpt"]), stranger))
    with pytest.raises(InputError, match="no training gene"):  # the held-out file's own genes are not training genes
        load_genes(load_checkpoint(run["ckpt"]), run["alpha"]["gene_h5"])
    assert not out.exists()
