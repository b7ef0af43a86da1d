"""The recipe schema: typed dataclasses registered with Hydra's ConfigStore as ``tfx_recipe``.

Every packaged recipe lists ``tfx_recipe`` first in its defaults, so Hydra checks each group file
and each override against these types while it composes; a recipe that does not is checked
against them right after. Component names (objective, strategy, logger, task, likelihood, ...)
are registry keys, never import paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from tfx.model.config import SPECIAL_TOKENS, ModelConfig
from tfx.model.lora import LORA_TARGETS


@dataclass
class VocabSchema:
    embeddings: list[str] = field(default_factory=list)  # <species>_gene.h5 files of a new model, in order
    add: list[str] = field(default_factory=list)  # continuation: files appended to the init checkpoint's vocabulary
    preset: Optional[str] = None  # the published model whose species list this is (sapiens, exemplar, metazoa)
    species: Optional[list[str]] = None  # the species vocab.embeddings must cover, in vocabulary order
    special_tokens: list[str] = field(default_factory=lambda: list(SPECIAL_TOKENS))
    aux_cols: list[str] = field(default_factory=lambda: ["assay"])
    add_assays: list[str] = field(default_factory=list)  # assay values the checkpoint's assay vocabulary gains


@dataclass
class DataSchema:
    source: str = "shards"  # shards | h5ad
    shards: Any = None  # shards: a directory, manifest, glob or URL, or a list of them (one source each)
    val_shards: Any = None
    weights: Optional[list[float]] = None  # per-source mixing weights, one per entry of `shards`
    files: list[str] = field(default_factory=list)  # h5ad: files read whole into memory
    val_files: list[str] = field(default_factory=list)
    gene_col: str = "ensembl_id"
    # how counts are read; null: the init checkpoint's record (new models: the official defaults)
    gene_order: Optional[str] = None  # var_order | random | expression_sorted
    clip_counts: Optional[float] = None
    normalize_to_scale: Optional[float] = None
    token_budget: int = 8192  # cells x padded length per batch, per device
    max_cells: int = 64
    pack: bool = False  # several cells per row, token_budget // pack_row_len rows a batch
    pack_row_len: Optional[int] = None  # null: seq_len + aux tokens (the longest cell)
    shuffle_buffer: int = 2000
    num_workers: int = 0
    on_corrupt: str = "skip"  # skip | raise: a shard that does not read
    max_corrupt_share: float = 0.1  # skip: the run stops when more of a source's shards are corrupt


@dataclass
class TrainerSchema:
    accelerator: str = "cpu"
    devices: Any = 1  # a count, -1 (all), or "auto"
    num_nodes: int = 1
    precision: str = "32"
    max_steps: int = 200
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_check_interval: int = 100
    limit_val_batches: int = 8
    checkpoint_every_n_steps: int = 100
    peak_tflops: Optional[float] = None  # per device, for MFU; null: Lightning's table for the GPU
    activation_checkpointing: bool = False


@dataclass
class StrategySchema:
    name: str = "auto"  # auto | ddp | deepspeed_zero1 | deepspeed_zero2 | deepspeed_zero3 | deepspeed_zero3_offload


@dataclass
class LoggerSchema:
    name: str = "csv"  # csv | wandb (a CSV log is always written)
    project: str = "tfx"
    mode: str = "offline"


@dataclass
class OptimSchema:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    total_steps: Optional[int] = None  # length of the LR schedule; null: trainer.max_steps
    min_lr_ratio: float = 0.1


@dataclass
class TaskSchema:
    name: str = "classification"  # a task registry key: classification | regression
    label_key: str = MISSING  # the obs column to predict (h5ad obs, or shard metadata)
    classes: Optional[list[str]] = None  # a classification's classes; null: every value in the training data


@dataclass
class LoraSchema:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # module-name suffixes: each block's attention q, k, v, out projections and feed-forward layers
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class FinetuneSchema:
    """How the backbone trains under a task head; the protein embedding table never does."""

    backbone: Optional[str] = None  # frozen | partial | full; null: frozen with an adapter, else partial
    trainable_layers: int = 2  # partial: the last layers that train
    adapter: str = "none"  # none | lora
    lora: LoraSchema = field(default_factory=LoraSchema)
    export: str = "merged"  # lora: merged (a plain checkpoint) | adapter (adapter weights beside the init checkpoint)


@dataclass
class Recipe:
    description: str = ""  # one line, shown by `tfx train --list`
    objective: str = "pretrain"  # pretrain | continue | finetune
    init: Optional[str] = None  # checkpoint directory to start from (continue, finetune)
    output_dir: str = MISSING
    seed: int = 0
    resume: Optional[str] = "auto"  # auto: output_dir's last checkpoint, if any; a path; null
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabSchema = field(default_factory=VocabSchema)
    data: DataSchema = field(default_factory=DataSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    strategy: StrategySchema = field(default_factory=StrategySchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    task: Optional[TaskSchema] = None
    finetune: FinetuneSchema = field(default_factory=FinetuneSchema)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="tfx_recipe", node=Recipe)
