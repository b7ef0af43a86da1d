"""The options of the `tfx` commands that only the command line has, one dataclass per command
(infer, generate, prompt and eval keep theirs beside their code, shared with the Python API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from tfx.errors import InputError
from tfx.options import Count, Device, Input, Options, Output, PositiveInt, Range, Seed, option
from tfx.outputs import DirOutput, FileOutput
from tfx.quickstart import STEPS  # light: its heavy imports are inside the function

SpeciesCount = Annotated[int, Range(int, 1, 8)]
REFERENCE_FLAGS = {  # `transcriptformer inference` flags -> tfx's (aliases of infer's options)
    "--checkpoint-path": "--checkpoint", "--data-file": "--data", "--output-path": "--output (a directory there)",
    "--output-filename": "--output (its file name)", "--gene-col-name": "--gene-col",
    "--pretrained-embedding": "--species-embedding", "--num-gpus": "--devices",
}
INTERRUPTED = {  # what an interrupted command keeps (the others keep nothing half-written)
    "embed-proteins": "finished genes are kept in {output}.partial, run the same command again to resume",
    "download": "run the same command again to resume",
    "download-data": "complete datasets are kept, run the same command again to fetch the rest",
}


@dataclass(frozen=True, kw_only=True)
class RegistryCommand(Options):
    """`tfx registry`: no options."""


@dataclass(frozen=True, kw_only=True)
class ShardCommand(Options):
    input: list[Annotated[str, Input("file")]] = option(
        help="h5ad files (raw counts), or TileDB-SOMA experiments (a directory or URI)")
    species: str = option(help="species name, e.g. homo_sapiens (see tfx registry)")
    output: Annotated[str, Output("dir", "the shards")] = option(
        help="output directory or object-store URL, e.g. s3://bucket/prefix (a re-run completes an interrupted one)")
    measurement: str = option("RNA", help="a SOMA experiment's measurement to read")
    obs_filter: str | None = option(
        None, help="a SOMA experiment's cells to read, e.g. \"is_primary_data == True and tissue_general == 'lung'\"")
    cells_per_shard: PositiveInt = option(10000, help="cells per shard, %(type)s")
    obs_keys: list[str] = option([], help="obs columns to store besides cell_type, assay, tissue")
    processes: PositiveInt | None = option(None, help="writer processes, %(type)s (default: one per CPU)")
    gene_col: str = option("ensembl_id", help="var column of gene ids ('index' for the var index)")
    use_raw: bool | None = option(None, help="auto (default), true or false")
    remove_duplicate_genes: bool = option(False, help="keep the first of genes listed twice")


@dataclass(frozen=True, kw_only=True)
class EmbedProteinsCommand(Options):
    fasta: Annotated[str, Input("file", stream=True)] = option(
        help="protein FASTA (.fa or .fa.gz); Ensembl peptide headers carry gene:ID")
    model: str = option("esm2_t36_3B_UR50D",
                        help="fair-esm model name (read from the torch hub cache) or a local .pt file")
    output: Annotated[str, Output("file", "the SPECIES_gene.h5 file", FileOutput("h5"))] = option(
        help="output SPECIES_gene.h5")
    overwrite: bool = option(False, help="replace an existing gene embedding file at --output")
    gene_map: Annotated[str, Input("file", stream=True)] | None = option(
        None, help="TSV of protein_id<TAB>gene_id, for headers without gene:ID")
    layer: int = option(33, help="representation layer (0 = token embeddings, -1 = the last)")
    isoforms: Literal["first", "longest", "mean"] = option(
        "first", help="the gene's first or longest protein, or the mean of all its proteins' embeddings")
    max_residues: PositiveInt = option(1022, help="residues kept per protein, %(type)s")
    token_budget: PositiveInt = option(4096, help="most tokens (sequences x padded length) per batch, %(type)s")
    device: Device = option("auto", help="auto: CUDA when present")


@dataclass(frozen=True, kw_only=True)
class AddSpeciesCommand(Options):
    checkpoint: Annotated[str, Input("dir")] = option(help="checkpoint directory to extend")
    embeddings: list[Annotated[str, Input("file")]] = option(help="SPECIES_gene.h5 files (official layout)")
    output: Annotated[str, Output("dir", "the checkpoint")] = option(help="new checkpoint directory (absent or empty)")
    overwrite: bool = option(False, help="replace a checkpoint already at --output")


@dataclass(frozen=True, kw_only=True)
class DownloadCommand(Options):
    name: Literal["tf-sapiens", "tf-exemplar", "tf-metazoa", "all-embeddings", "all"] = option(
        positional=True, help="the release to fetch")
    checkpoint_dir: Annotated[str, Output("dir", "the releases")] = option(
        "./checkpoints", help="unpacked to DIR/tf_sapiens/ etc. (default ./checkpoints)")
    base_url: str | None = option(
        None, help="a mirror serving NAME.tar.gz (default: https://czi-transcriptformer.s3.amazonaws.com/weights)")
    retries: Count = option(3, help="resumed retries after a dropped connection, %(type)s")


@dataclass(frozen=True, kw_only=True)
class DownloadDataCommand(Options):
    species: list[str] = option(help="binomials, e.g. 'homo sapiens' 'mus musculus' (or one comma-separated list)")
    output_dir: Annotated[str, Output("dir", "the datasets")] = option(
        "./data/cellxgene", help="directory the datasets (and their metadata) are written to")
    processes: PositiveInt = option(4, help="datasets downloaded at once, %(type)s")
    max_retries: PositiveInt = option(5, help="attempts per dataset, %(type)s")
    census_version: str = option("stable", help="the CELLxGENE Census release to list and fetch")
    no_metadata: bool = option(False, help="skip OUTPUT/dataset_metadata.json")
    shard: bool = option(False, help="also write WebDataset shards to OUTPUT/shards/<species>/<dataset_id>/")
    cells_per_shard: PositiveInt = option(10_000, help="with --shard, %(type)s")
    from_census: bool = option(False, help="with --shard: stream each species' cells from the Census's TileDB-SOMA "
                                           "store into OUTPUT/shards/<species>/census/, downloading no h5ad")
    obs_filter: str | None = option(None, help="with --from-census: the cells to shard, e.g. \"is_primary_data == "
                                               "True and tissue_general == 'lung'\" (default: primary cells)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.from_census and not self.shard:
            raise InputError("--from-census streams cells into shards; add --shard")
        if self.obs_filter and not self.from_census:
            raise InputError("--obs-filter selects the cells --from-census streams; add --shard --from-census")


@dataclass(frozen=True, kw_only=True)
class SynthCommand(Options):
    output: Annotated[str, Output("dir", "the atlas", DirOutput(("*.h5ad", "*_gene.h5")))] = option(
        help="directory for <species>.h5ad and <species>_gene.h5")
    overwrite: bool = option(False, help="replace an atlas already in --output (nothing else there)")
    species: SpeciesCount = option(3, help="number of species: synth_alpha, synth_beta, ..., %(type)s")
    cells: PositiveInt = option(600, help="cells per species, %(type)s")
    genes: Annotated[int, Range(int, lo=54)] = option(
        800, help="genes per species (75%% of them one-to-one orthologs, at least 40), %(type)s")
    seed: Seed = option(0, help="%(type)s")


@dataclass(frozen=True, kw_only=True)
class QuickstartCommand(Options):
    output: Annotated[str, Output("dir", "every step's output", DirOutput(tuple(
        f"{step}/**" for step in ("atlas", "shards", "run", "embeddings", "report")), "quickstart"))] = option(
        "quickstart", help="directory for every step's output")
    overwrite: bool = option(False, help="write into a quickstart directory that holds an earlier run "
                                         "(nothing else there)")
    species: SpeciesCount = option(3, help="number of species, %(type)s")
    cells: PositiveInt = option(600, help="cells per species, %(type)s")
    steps: PositiveInt = option(STEPS, help="pretraining steps (of 1,024 tokens), %(type)s")
    seed: Seed = option(0, help="%(type)s")


@dataclass(frozen=True, kw_only=True)
class TrainCommand(Options):
    recipe: str | None = option(None, positional=True,
                                help="a packaged recipe (e.g. pretrain/tiny; see --list) or a YAML file")
    overrides: list[str] = option([], positional=True,
                                  help="Hydra overrides, e.g. data.shards=DIR output_dir=runs/x")
    list_recipes: bool = option(False, flags=("--list",), help="list the recipes with their descriptions")
    recipes: str | None = option(None, metavar="DIR", help="a directory of your own recipes, searched before the "
                                                           "packaged ones (or set TFX_RECIPES)")
    check: bool = option(False, help="compose and build the recipe, print it and the model's parameter count; "
                                     "train nothing, write nothing")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.recipe and not self.list_recipes:
            raise InputError("name a recipe (tfx train --list shows them) or a recipe YAML file")


@dataclass(frozen=True, kw_only=True)
class ExportCommand(Options):
    run_dir: Annotated[str, Input("dir")] = option(positional=True, help="a tfx train output_dir")
    output: Annotated[str, Output("dir", "the checkpoint")] = option(
        help="checkpoint directory to write (absent or empty)")
    overwrite: bool = option(False, help="replace a checkpoint already at --output")
    lora_form: Literal["merged", "adapter"] | None = option(
        None, help="a LoRA run: adapters merged into the weights (the reference loads it) or kept as a small file "
                   "beside the base checkpoint; default: the recipe's finetune.export")
