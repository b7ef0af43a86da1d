"""`tfx prompt`: the options of its three questions, and their answers written as CSV and PNG files
(the computations are ``tfx.generate.prompt``'s)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd

from tfx.atomic import atomic_path
from tfx.checkpoint import Checkpoint, load_checkpoint
from tfx.data.anndata import MAX_COUNT
from tfx.generate import prompt as queries
from tfx.generate.sample import ORDERS, Species, parse_prompt, require_gene_head, species_of
from tfx.options import Input, Options, Output, PositiveInt, Range, Seed, option
from tfx.outputs import DirOutput, FileOutput

log = logging.getLogger(__name__)
HEATMAP_GENES = 300  # past this a heatmap is unreadable (and its figure takes gigabytes)


@dataclass(frozen=True, kw_only=True)
class PromptOptions(Options):
    """What every question reads."""

    checkpoint: Annotated[str, Input("dir")] = option(help="checkpoint directory (official release or tfx export)")
    species: str = option(help="a species of the checkpoint's vocabulary")
    assay: str | None = option(None, help="assay token (default: unknown)")


@dataclass(frozen=True, kw_only=True)
class NextOptions(PromptOptions):
    """`tfx prompt next`: the next gene's distribution after a prompt (top k, expected counts)."""

    prompt: str = option("", help="GENE[:COUNT],... (empty: what a cell starts with)")
    top_k: PositiveInt = option(20, help="genes listed, %(type)s")
    output: Annotated[str, Output("file", "the .csv file", FileOutput("csv"))] | None = option(
        None, help="also write the table as CSV")
    overwrite: bool = option(False, python=None, help="replace an existing output of the kind this command writes "
                                                       "(never anything else)")


@dataclass(frozen=True, kw_only=True)
class GeneGeneOptions(PromptOptions):
    """`tfx prompt gene-gene`: log p(g2 next | g1) - log p(g2 next | nothing): CSV and heatmap."""

    genes: str = option(help="G1,G2,... or a file with one gene per line")
    count: Annotated[float, Range(float, lo=1, hi=MAX_COUNT)] = option(  # the range of a --prompt count
        1.0, help="count of the prompt gene, %(type)s")
    output: Annotated[str, Output("dir", "the outputs", DirOutput(("gene_gene.csv", "gene_gene.png")))] = option(
        help="directory for gene_gene.csv and gene_gene.png")
    overwrite: bool = option(False, python=None, help="replace an existing output of the kind this command writes "
                                                       "(never anything else)")


@dataclass(frozen=True, kw_only=True)
class ProgrammesOptions(PromptOptions):
    """`tfx prompt programmes`: rank candidate genes for each cell type's marker prompt."""

    data: Annotated[str, Input("file")] = option(help="a labelled h5ad of raw counts")
    label: str = option("cell_type", help="obs column of cell types")
    candidates: str = option(help="G1,G2,... or a file with one gene per line (e.g. TFs)")
    markers: PositiveInt = option(6, help="most expressed markers per type in the prompt, %(type)s")
    cells: PositiveInt = option(
        64, help="sampled cells per type (importance-weighted: markers.csv says how many they weigh as), %(type)s")
    order: Literal[ORDERS] = option("var", help="generation order (see tfx generate)")  # type: ignore[valid-type]
    gene_col: str = option("ensembl_id", help="var column of gene ids ('index' for the var index)")
    seed: Seed = option(0, help="random seed, %(type)s")
    output: Annotated[str, Output("dir", "the outputs", DirOutput(("programmes.csv", "markers.csv", "programmes.png")))
                      ] = option(help="directory for programmes.csv, markers.csv, programmes.png")
    overwrite: bool = option(False, python=None, help="replace an existing output of the kind this command writes "
                                                       "(never anything else)")


QUESTIONS = {  # tfx prompt QUESTION: its options (the docstring after ": " is its help)
    "next": NextOptions, "gene-gene": GeneGeneOptions, "programmes": ProgrammesOptions}


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
