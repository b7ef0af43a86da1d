"""Generation: cached decoding equals the full forward, sampled cells' log-probabilities are exact,
the written h5ad reads back, and bad input is one line with exit code 2."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import random_cells, tiny_model
from teacher import build_teacher
from tfx.checkpoint import load_checkpoint
from tfx.cli import main
from tfx.generate.sample import species_of
from tfx.generate.score import score_cells
from tfx.tokenize import collate

SPECIES = "synth_alpha"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A causal-count-head checkpoint whose cells end by [END] well before seq_len."""
    return build_teacher(tmp_path_factory.mktemp("teacher") / "ckpt", n_genes=40, seq_len=48, end_bias=-1.0)


@pytest.mark.parametrize("link", ["softmax", "softplus"])
def test_cached_decoding_equals_the_training_forward(link):
    model = tiny_model(mu_link_fn=link).eval()
    cells = [c for c in random_cells(8, max_len=12, seed=1) if len(c[0]) >= 6]
    n = min(len(ids) for ids, _ in cells)
    aux = np.array([[0], [1], [2], [1], [0], [2], [1], [1]])[: len(cells)]  # 0: the unknown assay, masked
    batch = collate([(ids[:n], c[:n]) for ids, c in cells], 1, 15, aux)
    with torch.no_grad():
        full = model(batch)
        hidden, state = model.decode_start(len(cells), batch.aux_ids)
        steps = [hidden]
        for j in range(n - 1):  # one position at a time, then the rest at once
            steps.append(model.decode_genes(state, batch.gene_ids[:, j : j + 1], batch.counts[:, j : j + 1]))
        torch.testing.assert_close(torch.stack(steps, 1), full.hidden[:, :n], rtol=1e-5, atol=1e-5)
        if link != "softmax":
            rate = model.count_rate(full.hidden[:, 2], batch.gene_ids[:, 2])
            torch.testing.assert_close(rate, full.mu[:, 2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", ["free", "var"])
def test_sampled_log_prob_is_minus_the_scored_nll(teacher, tmp_path, order):
    out = tmp_path / "cells.h5ad"
    assert main(["generate", "--checkpoint", str(teacher), "--species", SPECIES, "--n-cells", "24", "--output",
                 str(out), "--order", order, "--assay", "10x 3' v3", "--seed", "3"]) == 0
    cells = anndata.read_h5ad(out)
    assert cells.obs["ended"].all() and (cells.obs["clipped_counts"] == 0).all()
    assert cells.obs["n_genes"].max() > 3
    assert list(cells.var["ensembl_id"]) == list(cells.var_names)
    ckpt = load_checkpoint(teacher)
    species = species_of(ckpt, SPECIES)
    X = cells.X.toarray()
    seqs = []
    for row, cols in zip(X, cells.obsm["generation_order"]):
        cols = cols[cols >= 0]
        assert (row[cols] >= 1).all() and (row > 0).sum() == len(cols)  # every drawn gene, and only those
        if order == "var":
            assert (np.diff(cols) > 0).all()  # the shape of real data
        seqs.append((species.ids[cols], row[cols]))
    nll = score_cells(ckpt, seqs, assay="10x 3' v3", support=(species, order))
    np.testing.assert_allclose(nll, -cells.obs["log_prob"].to_numpy(), rtol=0, atol=1e-4)
    if order == "var":  # stored in var order, a file reads back as it was drawn
        scored = tmp_path / "scored.h5ad"
        assert main(["infer", "--checkpoint", str(teacher), "--data", str(out), "--output", str(scored),
                     "--outputs", "nll", "--device", "cpu"]) == 0
        unrestricted = anndata.read_h5ad(scored).obs["nll"].to_numpy()
        np.testing.assert_allclose(unrestricted, score_cells(ckpt, seqs, assay="10x 3' v3"), rtol=1e-5)
        assert (unrestricted > nll - 1e-4).all()  # renormalising over fewer genes only raises probability


def test_the_python_entry_samples_the_cells_tfx_generate_writes(teacher, tmp_path):
    import tfx

    out = tmp_path / "cells.h5ad"
    args = ["--species", SPECIES, "--n-cells", "6", "--order", "free", "--seed", "5", "--prompt", "", "--top-k", "9"]
    assert main(["generate", "--checkpoint", str(teacher), "--output", str(out), "--device", "cpu", *args]) == 0
    written = anndata.read_h5ad(out)
    cells = tfx.generate_cells(tfx.load(teacher), SPECIES, 6, order="free", seed=5, top_k=9, device="cpu")
    np.testing.assert_array_equal(cells.X.toarray(), written.X.toarray())
    np.testing.assert_array_equal(cells.obs["log_prob"].to_numpy(), written.obs["log_prob"].to_numpy())
    assert cells.uns["generation"]["seed"] == 5 and list(cells.var_names) == list(written.var_names)


def test_top_k_1_draws_the_same_genes_whatever_the_seed(teacher, tmp_path):
    runs = []
    for seed in ("1", "2"):
        out = tmp_path / f"s{seed}.h5ad"
        assert main(["generate", "--checkpoint", str(teacher), "--species", SPECIES, "--n-cells", "6", "--output",
                     str(out), "--order", "free", "--top-k", "1", "--seed", seed, "--max-genes", "5"]) == 0
        runs.append(anndata.read_h5ad(out))
    orders = [r.obsm["generation_order"] for r in runs]
    assert (orders[0] == orders[0][0]).all() and (orders[0] == orders[1]).all()
    assert not np.array_equal(runs[0].X.toarray(), runs[1].X.toarray())  # counts still sampled


def test_a_tiny_temperature_draws_the_likeliest_gene_as_top_k_1_does(teacher, tmp_path):
    """1e-300 divides logits past float range: each draw is then the argmax, not a NaN distribution."""
    runs = []
    for name, flags in (("cold", ["--temperature", "1e-300"]), ("top1", ["--top-k", "1"])):
        out = tmp_path / f"{name}.h5ad"
        assert main(["generate", "--checkpoint", str(teacher), "--species", SPECIES, "--n-cells", "4", "--output",
                     str(out), "--order", "free", "--max-genes", "5", *flags]) == 0
        runs.append(anndata.read_h5ad(out).obsm["generation_order"])
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("order", ["free", "var"])
def test_every_cell_holds_the_prompt(teacher, tmp_path, order):
    """free: the cell starts with the prompt; var: the prompt genes sit in their var places, genes
    drawn between them, as a real cell holding them would be read."""
    ckpt = load_checkpoint(teacher)
    genes = species_of(ckpt, SPECIES).genes
    out = tmp_path / "p.h5ad"
    assert main(["generate", "--checkpoint", str(teacher), "--species", SPECIES, "--n-cells", "16", "--output",
                 str(out), "--order", order, "--prompt", f"{genes[30]}:4,{genes[12]}", "--max-genes", "20"]) == 0
    cells = anndata.read_h5ad(out)
    assert (cells.X.toarray()[:, [30, 12]] == [4, 1]).all()
    generated = cells.obsm["generation_order"]
    if order == "free":
        assert (generated[:, :2] == [30, 12]).all()
    else:
        for row in generated:
            row = row[row >= 0]
            assert (np.diff(row) > 0).all() and {12, 30} <= set(row) and len(row) <= 20
        assert (cells.obs["n_genes"] > 2).any()  # genes were drawn around the prompt


def test_a_var_order_prompt_that_fills_the_cell_ends_it(teacher, tmp_path):
    """With room for the prompt genes only, they are placed and the cell ends there."""
    genes = species_of(load_checkpoint(teacher), SPECIES).genes
    out = tmp_path / "full.h5ad"
    assert main(["generate", "--checkpoint", str(teacher), "--species", SPECIES, "--n-cells", "4", "--output",
                 str(out), "--order", "var", "--prompt", f"{genes[30]}:4,{genes[12]}", "--max-genes", "2"]) == 0
    cells = anndata.read_h5ad(out)
    assert (cells.obs["n_genes"] == 2).all() and (cells.X.toarray()[:, [30, 12]] == [4, 1]).all()


def test_clipped_counts_are_the_sampled_ones_only(teacher, tmp_path):
    """A prompt's count above the clip is given, not sampled: a var-order prompt sits in its var
    place, so obs["clipped_counts"] must skip it wherever it lies."""
    ckpt = load_checkpoint(teacher)
    clip, genes = ckpt.data_cfg.clip_counts, species_of(ckpt, SPECIES).genes
    out = tmp_path / "c.h5ad"
    assert main(["generate", "--checkpoint", str(teacher), "--species", SPECIES, "--n-cells", "8", "--output",
                 str(out), "--order", "var", "--prompt", f"{genes[20]}:{clip + 50:g}"]) == 0
    cells = anndata.read_h5ad(out)
    x = cells.X.toarray()
    assert (x[:, 20] == clip + 50).all()
    x[:, 20] = 0
    np.testing.assert_array_equal(cells.obs["clipped_counts"].to_numpy(), (x > clip).sum(axis=1))


def test_outputs_of_the_wrong_kind_are_refused_before_any_work(teacher, tmp_path, capsys):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("kept")
    gene = species_of(load_checkpoint(teacher), SPECIES).genes[3]
    ckpt, a_dir, a_file = str(teacher), str(tmp_path / "a_dir"), str(tmp_path / "a_file")
    cases = [
        (["generate", "--checkpoint", ckpt, "--species", SPECIES, "--n-cells", "2", "--output", a_dir],
         "is a directory"),
        (["prompt", "next", "--checkpoint", ckpt, "--species", SPECIES, "--prompt", gene, "--output", a_dir],
         "is a directory; name the .csv file"),
        (["prompt", "gene-gene", "--checkpoint", ckpt, "--species", SPECIES, "--genes", gene, "--output", a_file],
         "is a file; name a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert (tmp_path / "a_file").read_text() == "kept" and not any((tmp_path / "a_dir").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--species", "danio_rerio"], "--species danio_rerio: not in checkpoint"),
    (["--n-cells", "0"], "argument --n-cells: 0 is not an integer >= 1"),
    (["--temperature", "0"], "argument --temperature: 0 is not a number > 0"),
    (["--prompt", "NOT_A_GENE:3"], "gene NOT_A_GENE is not in species synth_alpha's vocabulary (no species"),
    (["--assay", "nanopore"], "--assay nanopore: not in the checkpoint's assay vocabulary"),
    (["--max-genes", "5000"], "--max-genes 5000: more than the 47 genes a cell of this checkpoint can have"),
])
def test_bad_generate_input_is_one_line_and_exit_2(teacher, tmp_path, capsys, args, message):
    base = {"--species": SPECIES, "--n-cells": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["generate", "--checkpoint", str(teacher), "--output", str(tmp_path / "x.h5ad")]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "x.h5ad").exists()


G = "SYNTH_ALPHA_00001"


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", f"{G}:inf"], f"--prompt: count inf of gene {G} is not a count from 1 to 1e+09"),
    (["generate", "--prompt", f"{G}:1e300"], f"--prompt: count 1e300 of gene {G} is not a count"),
    (["generate", "--prompt", f"{G}:nan"], f"--prompt: count nan of gene {G} is not a count"),
    (["prompt", "next", "--prompt", f"{G}:nan"], f"--prompt: count nan of gene {G} is not a count"),
    (["prompt", "next", "--prompt", ",".join(f"SYNTH_ALPHA_{i:05d}" for i in range(40))],
     "--prompt: 40 genes, more than the 39 a cell of this checkpoint may have (seq_len 40)"),
    (["generate", "--prompt", ",".join(f"SYNTH_ALPHA_{i:05d}" for i in range(40))],
     "--prompt: 40 genes, more than the 39 a cell of this checkpoint may have"),
    (["prompt", "gene-gene", "--genes", "", "--output", "{tmp}/gg"], "--genes: names no gene"),
    (["prompt", "gene-gene", "--genes", ",,,", "--output", "{tmp}/gg"], "--genes: names no gene"),
    (["prompt", "gene-gene", "--genes", f"{G}:5", "--output", "{tmp}/gg"], f"--genes: '{G}:5' gives a count"),
    (["prompt", "programmes", "--data", "{tmp}/cells.h5ad", "--candidates", G, "--markers", "100000",
      "--output", "{tmp}/pp"], "--markers: 100000 genes, more than the 39"),
    (["prompt", "programmes", "--data", "{tmp}/missing.h5ad", "--candidates", G, "--output", "{tmp}/pp"],
     "missing.h5ad: no such file"),
    (["prompt", "programmes", "--data", "{tmp}/text.h5ad", "--candidates", G, "--output", "{tmp}/pp"],
     "text.h5ad: not a readable h5ad file"),
    (["prompt", "programmes", "--data", "{tmp}/zeros.h5ad", "--candidates", G, "--output", "{tmp}/pp"],
     "zeros.h5ad: X holds no counts"),
    (["prompt", "programmes", "--data", "{tmp}/nan.h5ad", "--candidates", G, "--output", "{tmp}/pp"],
     "nan.h5ad: X holds NaN"),
])
def test_prompts_out_of_range_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    from conftest import write_h5ad

    ckpt = build_teacher(tmp_path / "t", n_genes=60, seq_len=40)
    genes = [f"SYNTH_ALPHA_{i:05d}" for i in range(60)]
    obs = pd.DataFrame({"cell_type": ["a", "b"] * 3}, index=[f"c{i}" for i in range(6)])
    write_h5ad(tmp_path / "cells.h5ad", genes, np.arange(360).reshape(6, 60) % 5, obs)
    write_h5ad(tmp_path / "zeros.h5ad", genes, np.zeros((6, 60)), obs)
    write_h5ad(tmp_path / "nan.h5ad", genes, np.where(np.eye(6, 60) > 0, np.nan, 1.0), obs)
    (tmp_path / "text.h5ad").write_text("not hdf5")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = ["--output", str(tmp_path / "x.h5ad"), "--n-cells", "2"] if argv[0] == "generate" else []
    assert main([*argv, "--checkpoint", str(ckpt), "--species", SPECIES, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not any(p.name in ("x.h5ad", "gg", "pp") for p in tmp_path.iterdir())


def test_a_prompt_gene_of_another_species_is_named(tmp_path, capsys):
    alpha = build_teacher(tmp_path / "a", species="synth_alpha", n_genes=10)
    from tfx.checkpoint.surgery import add_species
    from tfx.checkpoint import save_checkpoint

    beta_file = build_teacher(tmp_path / "b", species="synth_beta", n_genes=10).parent / ".b_vocab" / "synth_beta_gene.h5"
    both = save_checkpoint(add_species(load_checkpoint(alpha), [beta_file]), tmp_path / "both")
    beta_gene = species_of(load_checkpoint(both), "synth_beta").genes[0]
    assert main(["generate", "--checkpoint", str(both), "--species", SPECIES, "--n-cells", "1", "--output",
                 str(tmp_path / "x.h5ad"), "--prompt", beta_gene]) == 2
    assert f"gene {beta_gene} is not in species synth_alpha's vocabulary (it is a gene of synth_beta)" in \
        capsys.readouterr().err


def test_a_checkpoint_without_gene_head_cannot_generate(tmp_path, capsys):
    ckpt = build_teacher(tmp_path / "nohead", n_genes=10, gene_id_loss_weight=0.0)
    assert main(["generate", "--checkpoint", str(ckpt), "--species", SPECIES, "--n-cells", "1", "--output",
                 str(tmp_path / "x.h5ad")]) == 2
    assert "has no gene-id head" in capsys.readouterr().err


def test_next_gene_and_gene_gene_are_the_full_forward_distributions(teacher, tmp_path, capsys):
    from tfx.generate.prompt import gene_gene
    from tfx.generate.sample import parse_prompt

    ckpt = load_checkpoint(teacher)
    species = species_of(ckpt, SPECIES)
    g = species.genes
    out = tmp_path / "next.csv"
    assert main(["prompt", "next", "--checkpoint", str(teacher), "--species", SPECIES, "--prompt",
                 f"{g[3]}:5,{g[20]}", "--top-k", "5", "--output", str(out)]) == 0
    table = __import__("pandas").read_csv(out)
    prompt = parse_prompt(ckpt, species, f"{g[3]}:5,{g[20]}")
    batch = collate([(np.array(prompt.ids), np.array(prompt.counts, np.float32))], ckpt.vocab.pad, 48,
                    np.zeros((1, 1), np.int64))
    with torch.no_grad():
        logits = ckpt.model.next_gene_logits(ckpt.model(batch).hidden[0, 2])
    allowed = species.mask(ckpt.model.vocab_size, "cpu")
    allowed[prompt.ids] = False
    allowed[ckpt.vocab.end] = True
    expected = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    top = torch.topk(expected, 5)
    assert list(table["gene"]) == [ckpt.vocab.tokens[i] for i in top.indices]
    np.testing.assert_allclose(table["probability"], top.values.numpy(), rtol=1e-5)
    assert ((table["expected_count"] > 1) | (table["gene"] == "[END]")).all()  # a ZTP mean exceeds 1

    pairs = tmp_path / "pairs"
    assert main(["prompt", "gene-gene", "--checkpoint", str(teacher), "--species", SPECIES, "--genes",
                 f"{g[1]},{g[9]},{g[30]}", "--output", str(pairs)]) == 0
    matrix = __import__("pandas").read_csv(pairs / "gene_gene.csv", index_col=0).to_numpy()
    assert (pairs / "gene_gene.png").read_bytes()[:4] == b"\x89PNG"
    with torch.no_grad():
        def logp(ids):
            b = collate([(np.array(ids, np.int64), np.ones(len(ids), np.float32))], ckpt.vocab.pad, 48, None)
            b.aux_ids = None
            return torch.log_softmax(ckpt.model.next_gene_logits(ckpt.model(b).hidden[0, len(ids)]), -1)
        cols = [ckpt.vocab.index[x] for x in (g[1], g[9], g[30])]
        expected = np.stack([(logp([c]) - logp([]))[cols].numpy() for c in cols])
    np.testing.assert_allclose(matrix, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gene_gene(ckpt, cols), expected, rtol=1e-4, atol=1e-5)


def test_programme_presence_is_the_weighted_frequency_of_drawn_genes(teacher):
    """The estimate agrees with counting the genes of other sampled cells, weighted."""
    from tfx.generate.prompt import presence, programme_presence
    from tfx.generate.sample import Prompt, sample_cells

    ckpt = load_checkpoint(teacher)
    species = species_of(ckpt, SPECIES)
    markers, candidates = [int(species.ids[5]), int(species.ids[25])], [int(i) for i in species.ids[:20]]
    estimate, ess = programme_presence(ckpt, species, markers, candidates, cells=2000)
    many = sample_cells(ckpt, species, 4000, prompt=Prompt(markers, [1.0, 1.0]),
                        generator=torch.Generator().manual_seed(9))
    frequency = presence(many, candidates)
    assert estimate[5] == pytest.approx(1.0) and frequency[5] == pytest.approx(1.0)  # a prompt gene is in every cell
    assert ess > 200
    np.testing.assert_allclose(estimate, frequency, atol=0.08)
    assert frequency.std() > 0.1  # the genes differ, so agreement means something


def test_scores_of_a_checkpoint_without_gene_head_are_refused(tmp_path, capsys):
    ckpt = build_teacher(tmp_path / "nohead", n_genes=10, gene_id_loss_weight=0.0)
    from conftest import write_h5ad

    data = write_h5ad(tmp_path / "cells.h5ad", species_of(load_checkpoint(ckpt), SPECIES).genes, np.ones((2, 10)))
    assert main(["infer", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp_path / "o.h5ad"),
                 "--outputs", "embeddings,nll"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no gene-id head" in err


def test_an_unknown_count_link_is_refused():
    from tfx.model import ModelConfig
    from tfx.errors import ConfigError

    with pytest.raises(ConfigError, match="mu_link_fn 'sigmoid' is not supported; choose one of softmax, exp, softplus"):
        ModelConfig(mu_link_fn="sigmoid")


def test_decoding_scores_equal_the_full_forward_scores(teacher):
    from tfx.generate.score import decode_nll

    ckpt = load_checkpoint(teacher)
    cells = [(ids + 7, c) for ids, c in random_cells(10, vocab_size=40, max_len=20, seed=4)]  # ids 14..46: genes
    np.testing.assert_allclose(decode_nll(ckpt, cells, assay="MERFISH"), score_cells(ckpt, cells, assay="MERFISH"),
                               rtol=1e-5)


def _exact_presence(ckpt, species, prompt_gene: int, prompt_count: float, limit: int) -> np.ndarray:
    """p(each species gene in the cell | prompt_gene in it with prompt_count) under the model's own
    var-order sampler, by enumerating every cell: each gene subset in var order, each count up to
    the clip (the model reads counts clipped, so counts from the clip up are one branch)."""
    from tfx.generate.prompt import _prompt_hidden
    from tfx.generate.sample import Prompt, ztp_log_prob

    model, clip, end = ckpt.model.eval(), int(ckpt.data_cfg.clip_counts), ckpt.model.special.end
    genes = [int(g) for g in species.ids]
    joint = np.zeros(len(genes))  # p(gene in the cell, prompt gene in it with its count)
    total = 0.0

    def walk(ids, counts, logp):
        nonlocal total
        with torch.no_grad():
            hidden = _prompt_hidden(ckpt, [Prompt(ids, counts)], None)
            nxt = [g for g in genes if (not ids or g > ids[-1])] if len(ids) < limit else []
            choice = torch.log_softmax(model.next_gene_logits(hidden)[0, nxt + [end]].double(), -1)
            if prompt_gene in ids:
                total += np.exp(logp + choice[-1].item())
                joint[[genes.index(g) for g in ids]] += np.exp(logp + choice[-1].item())
            for j, g in enumerate(nxt):
                rate = (model.count_rate(hidden, torch.tensor([g])).double() + model.cfg.log_counts_eps)[0]
                if g == prompt_gene:
                    branches = [(prompt_count, ztp_log_prob(torch.tensor(prompt_count, dtype=torch.float64), rate))]
                else:
                    below = [ztp_log_prob(torch.tensor(float(k), dtype=torch.float64), rate) for k in range(1, clip)]
                    rest = torch.log1p(-torch.stack(below).exp().sum()) if below else torch.tensor(0.0)
                    branches = list(zip(range(1, clip), below)) + [(clip, rest)]
                for count, logc in branches:
                    walk(ids + [g], counts + [float(count)], logp + choice[j].item() + logc.item())

    walk([], [], 0.0)
    return joint / total


@pytest.mark.parametrize("max_genes", [None, 2])
def test_weighted_prompt_cells_give_the_models_exact_conditional(tmp_path, max_genes):
    """A var-order prompt forces its gene in, so the prompted cells are not the model's cells
    given the prompt; weighted (Sampled.log_weight), how often each gene is drawn converges to the
    exact p(gene in the cell | prompt gene in it, with its count), enumerated over all cells of a
    5-gene species."""
    from dataclasses import replace

    from tfx.generate.prompt import effective_cells, presence
    from tfx.generate.sample import Prompt, sample_cells

    ckpt = load_checkpoint(build_teacher(tmp_path / "small", n_genes=5, seq_len=8, scale=4.0))
    ckpt.data_cfg = replace(ckpt.data_cfg, clip_counts=2.0)  # counts of 2 and more read alike: few branches
    species = species_of(ckpt, SPECIES)
    genes = [int(g) for g in species.ids]
    a = genes[3]
    exact = _exact_presence(ckpt, species, a, 3.0, min(max_genes or 7, 7))
    assert exact[3] == pytest.approx(1.0)
    sampled = sample_cells(ckpt, species, 40000, prompt=Prompt([a], [3.0]), max_genes=max_genes,
                           generator=torch.Generator().manual_seed(0))
    assert effective_cells(sampled.log_weight) > 4000
    np.testing.assert_allclose(presence(sampled, genes), exact, atol=0.02)
    unweighted = np.array([np.mean([g in set(cell) for cell in sampled.genes]) for g in genes])
    assert np.abs(unweighted - exact).max() > 0.1  # the forced cells alone are far from it
