"""`tfx infer`'s options, and ``tfx.load``'s and ``tfx.embed``'s arguments: declared apart from the
inference code so that the command's parser (and its --help) imports neither torch nor anndata."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Literal

from tfx.errors import InputError
from tfx.options import Device, Input, Options, Output, PositiveInt, Range, group, option
from tfx.outputs import FileOutput, check_output

if TYPE_CHECKING:
    from tfx.checkpoint import Checkpoint

OUTPUTS = ("embeddings", "llh", "gene_llh", "nll", "predictions")


@dataclass(frozen=True, kw_only=True)
class LoadOptions(Options):
    """How a checkpoint is served: `tfx infer`'s options of these names and ``tfx.load``'s arguments."""

    attention: str | None = option(None, help="attention backend (registry name); default: the checkpoint's")
    clip_counts: Annotated[float, Range(float, above=0)] | None = option(
        None, help="clip counts at this value, %(type)s; default: what the checkpoint records (30 for official releases)")
    species_embeddings: list[Annotated[str, Input("file")]] | None = option(
        None, flags=("--species-embedding", "--pretrained-embedding"),
        help="gene embedding h5 files of out-of-distribution species: their genes replace the checkpoint's "
             "vocabulary (tfx add-species adds a species instead)")


@dataclass(frozen=True, kw_only=True)
class InferOptions(Options):
    """What inference computes and how: `tfx infer`'s options and ``tfx.embed``'s arguments."""

    emb_type: Literal["cell", "cge"] = option("cell", help="cell embeddings, or contextual gene embeddings (cge)")
    outputs: tuple[Literal[OUTPUTS], ...] = option(  # type: ignore[valid-type]
        ("embeddings",), help=f"comma list of: {', '.join(OUTPUTS)} (predictions: a fine-tuned checkpoint's task head)")
    batch_size: PositiveInt = option(256, help="most cells per batch, %(type)s (the reference's default is 8)")
    token_budget: PositiveInt = option(16384, help="most cells x padded length per batch, %(type)s")
    device: Device = option("auto", help="auto: CUDA when present")
    devices: Annotated[int, Range(int, lo=1, also=(-1,))] = option(
        1, flags=("--devices", "--num-gpus"), python=None,  # a file is split across processes; memory is one
        help="processes, one per GPU (-1: every GPU), %(type)s")
    precision: Literal["32", "bf16-mixed", "16-mixed"] = option(
        "32", help="the reference's default is 16-mixed; 32 is exact on any device")
    gene_col: str | None = option(None, flags=("--gene-col", "--gene-col-name"),
                                  help="var column of gene ids ('index' for the var index); default: the "
                                       "checkpoint's (ensembl_id)")
    use_raw: bool | None = option(None, help="auto (default), true or false")
    remove_duplicate_genes: bool = option(False, help="keep the first of genes listed twice")
    chunk_size: PositiveInt = option(4096, help="cells read from the file at a time, %(type)s")
    model_type: Literal["transcriptformer", "esm2ce"] = option(
        "transcriptformer", help="esm2ce: the ESM2-CE baseline, each cell the pooled frozen protein embeddings of "
                                 "its genes (no transformer; embeddings only)")
    layer: int = option(-1, flags=("--embedding-layer-index",),
                        help="transformer layer the embeddings come from (-1: the last; embeddings only otherwise)")
    measurement: str = option("RNA", help="a TileDB-SOMA experiment's measurement to read")
    obs_filter: str | None = option(
        None, help="a TileDB-SOMA experiment's cells to embed, e.g. \"tissue_general == 'lung'\" (pandas' obs.query "
                   "selects the same cells)")

    # what the engine reads: each output asked for, and the batch's most cells
    embeddings = property(lambda self: "embeddings" in self.outputs)
    llh = property(lambda self: "llh" in self.outputs)
    gene_llh = property(lambda self: "gene_llh" in self.outputs)  # the reference's per-position gene-id NLL and its mean
    nll = property(lambda self: "nll" in self.outputs)  # total negative log-probability under the training factorisation
    predictions = property(lambda self: "predictions" in self.outputs)  # the fine-tuned task head's (ckpt.task)
    max_cells = property(lambda self: self.batch_size)

    def for_checkpoint(self, ckpt: Checkpoint) -> InferOptions:
        """These options checked against ``ckpt`` (``check``), with its gene column where none is given."""
        self.check(ckpt)
        return self if self.gene_col else replace(self, gene_col=ckpt.data_cfg.gene_col_name)

    @property
    def scores(self) -> tuple[str, ...]:
        """The per-cell obs columns asked for."""
        return tuple(name for name in ("llh", "gene_llh", "nll") if getattr(self, name))

    def check(self, ckpt: Checkpoint) -> None:
        """Refuse options this checkpoint cannot serve together (one line naming the option)."""
        heads = [name for name in (*self.scores, "predictions") if getattr(self, name)]
        if self.predictions and ckpt.task is None:
            raise InputError(f"{ckpt.path}: has no task head (task.json); --outputs predictions needs a "
                             "checkpoint exported by a finetune recipe")
        if (self.gene_llh or self.nll) and not ckpt.model.has_gene_head:
            raise InputError(f"--outputs gene_llh/nll: checkpoint {ckpt.path} has no gene-id head "
                             "(gene_id_loss_weight 0); ask for embeddings and llh only")
        if self.model_type == "esm2ce" and heads:
            raise InputError(f"--model-type esm2ce has no transformer and no heads, so no {', '.join(heads)}; "
                             "ask --outputs embeddings")
        n = ckpt.model_cfg.num_layers
        if not -n <= self.layer < n:
            raise InputError(f"--embedding-layer-index {self.layer}: the checkpoint has {n} layers; "
                             f"use {-n} to {n - 1} (-1: the last)")
        if self.layer % n != n - 1 and (heads or self.model_type == "esm2ce"):
            raise InputError(f"--embedding-layer-index {self.layer}: applies to the transformer's embeddings only "
                             f"(the heads read the last layer); drop it or ask --outputs embeddings")

    def embed_dim(self, ckpt: Checkpoint) -> int:
        """Width of the embeddings: the protein embeddings' for esm2ce, the model's otherwise."""
        return ckpt.model.gene_embeddings.embedding.embedding_dim if self.model_type == "esm2ce" \
            else ckpt.model_cfg.embed_dim


@dataclass(frozen=True, kw_only=True)
class InferCommand(Options):
    """`tfx infer`: the files it reads and writes, then how the checkpoint is served and what is computed.
    In Python the checkpoint is ``tfx.load(path)``'s and ``tfx.embed(adata, model, key)``'s ``model``."""

    checkpoint: Annotated[str, Input("dir")] = option(
        flags=("--checkpoint", "--checkpoint-path"), python=("path", "model"),
        help="checkpoint directory (official release or tfx export)")
    data: list[Annotated[str, Input("file")]] = option(
        flags=("--data", "--data-file"), python="adata",
        help="input h5ad (raw counts), several (one output, their cells in order), a tfx shard directory, or a "
             "TileDB-SOMA experiment alone (a directory or URI; see --obs-filter)")
    output: Annotated[str, Output("file", "the .h5ad file")] | None = option(None, python="key",
                                                                             help="output h5ad (required)")
    output_path: Annotated[str, Output("dir", "the output")] | None = option(None, hidden=True, python=None,
                                                                            help="the reference's output directory")
    output_filename: str = option("embeddings.h5ad", hidden=True, python=None,
                                  help="the reference's output file name")
    overwrite: bool = option(False, python=None, help="replace an existing output of the kind this command writes "
                                                       "(never anything else)")
    load: LoadOptions = group(LoadOptions)
    options: InferOptions = group(InferOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output is None and self.output_path is None:
            raise InputError("--output: name the output h5ad (or the reference's --output-path DIR)")
        check_output(self.output_file, FileOutput("h5ad"), overwrite=self.overwrite,
                     inputs=[self.checkpoint, *self.data, *(self.load.species_embeddings or [])], option="--output")

    @property
    def output_file(self) -> str:
        return self.output or os.path.join(self.output_path, self.output_filename)
