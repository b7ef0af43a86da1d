"""The options of `tfx generate` and of `tfx prompt`'s questions (and ``tfx.generate``'s arguments):
declared apart from the sampling code so that the commands' parsers (and --help) import no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from tfx.data import MAX_COUNT
from tfx.options import Device, Input, Options, Output, PositiveFloat, PositiveInt, Range, Seed, group, option
from tfx.outputs import DirOutput, FileOutput

ORDERS = ("var", "free")


@dataclass(frozen=True, kw_only=True)
class GenerateOptions(Options):
    """What is sampled: `tfx generate`'s options and ``tfx.generate``'s arguments."""

    species: str = option(help="a species of the checkpoint's vocabulary")
    n_cells: PositiveInt = option(help="cells to sample, %(type)s")
    assay: str | None = option(None, help="assay token (default: unknown)")
    prompt: str | None = option(None, help="GENE[:COUNT],... that every cell starts with")
    order: Literal[ORDERS] = option(  # type: ignore[valid-type]
        "var", help="var: genes in vocabulary (var) order, as cells are read; free: any order the model prefers "
                    "(kept in obsm['generation_order'])")
    temperature: PositiveFloat = option(1.0, help="softmax temperature of each gene draw, %(type)s")
    top_k: PositiveInt | None = option(None, help="draw among the k likeliest genes only, %(type)s")
    max_genes: PositiveInt | None = option(None, help="most genes per cell, %(type)s (default: seq_len - 1)")
    seed: Seed = option(0, help="random seed, %(type)s")
    batch_size: PositiveInt = option(64, help="cells sampled at once, %(type)s")
    device: Device = option("auto", help="auto: CUDA when present")


@dataclass(frozen=True, kw_only=True)
class GenerateCommand(Options):
    """`tfx generate`: the checkpoint read and the h5ad written, then what is sampled. In Python the
    checkpoint is ``tfx.load(path, attention=...)``'s and ``tfx.generate(model, ...)`` returns the cells."""

    checkpoint: Annotated[str, Input("dir")] = option(python=("path", "model"),
                                                      help="checkpoint directory (official release or tfx export)")
    output: Annotated[str, Output("file", "the .h5ad file", FileOutput("h5ad"))] = option(python=None, help="output h5ad")
    overwrite: bool = option(False, python=None, help="replace an existing output of the kind this command writes "
                                                       "(never anything else)")
    attention: str | None = option(None, help="attention backend of the full forward (registry name)")
    options: GenerateOptions = group(GenerateOptions)


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
