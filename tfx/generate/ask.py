"""`tfx prompt`: the answers to its three questions (their options: ``tfx.generate.options``) written
as CSV and PNG files (the computations are ``tfx.generate.prompt``'s)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tfx.atomic import atomic_path
from tfx.checkpoint import Checkpoint, load_checkpoint
from tfx.generate import prompt as queries
from tfx.generate.options import GeneGeneOptions, NextOptions, ProgrammesOptions, PromptOptions
from tfx.generate.sample import Species, parse_prompt, require_gene_head, species_of

log = logging.getLogger(__name__)
HEATMAP_GENES = 300  # past this a heatmap is unreadable (and its figure takes gigabytes)


def _open(opts: PromptOptions) -> tuple[Checkpoint, Species]:
    ckpt = load_checkpoint(opts.checkpoint)
    require_gene_head(ckpt)
    return ckpt, species_of(ckpt, opts.species)


def ask_next(opts: NextOptions) -> pd.DataFrame:
    """The next-gene table; also written as CSV to ``opts.output`` when given."""
    ckpt, species = _open(opts)
    table = queries.next_gene(ckpt, species, parse_prompt(ckpt, species, opts.prompt), assay=opts.assay,
                              top_k=opts.top_k)
    if opts.output:
        with atomic_path(opts.output) as tmp:
            table.to_csv(tmp, index=False)
    return table


def ask_gene_gene(opts: GeneGeneOptions) -> tuple[Path, Path | None, list[str]]:
    """gene_gene.csv and gene_gene.png (up to HEATMAP_GENES genes) under ``opts.output``; returns their
    paths and the genes."""
    ckpt, species = _open(opts)
    genes = queries.gene_list(ckpt, species, opts.genes, "--genes")
    names = [ckpt.vocab.tokens[g] for g in genes]
    matrix = queries.gene_gene(ckpt, genes, count=opts.count, assay=opts.assay)
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "gene_gene.csv") as tmp:
        pd.DataFrame(matrix, index=names, columns=names).to_csv(tmp, index_label="prompt")
    if len(names) > HEATMAP_GENES:
        log.warning("%d genes: the table is in %s; no heatmap is drawn past %d genes", len(names),
                    out / "gene_gene.csv", HEATMAP_GENES)
        return out / "gene_gene.csv", None, names
    queries.heatmap_png(out / "gene_gene.png", matrix, names, names,
                        "log p(column next | row) - log p(column next | nothing)")
    return out / "gene_gene.csv", out / "gene_gene.png", names


def ask_programmes(opts: ProgrammesOptions) -> pd.DataFrame:
    """programmes.csv, markers.csv and programmes.png under ``opts.output``; returns the programme table."""
    ckpt, species = _open(opts)
    candidates = queries.gene_list(ckpt, species, opts.candidates, "--candidates")
    return queries.run_programmes(ckpt, species, opts.data, opts.label, candidates, opts.output,
                                  n_markers=opts.markers, gene_col=opts.gene_col, assay=opts.assay, order=opts.order,
                                  cells=opts.cells, seed=opts.seed)
