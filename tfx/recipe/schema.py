"""The recipe schema: typed dataclasses registered with Hydra's ConfigStore as ``tfx_recipe``.

Every packaged recipe lists ``tfx_recipe`` first in its defaults, so Hydra checks each group file
and each override against these types while it composes; a recipe that does not is checked
against them right after. A choice is an Enum, so a value outside it fails there too, naming the
choices. Numbers carry their bounds beside their type (``bounded``), checked when the recipe is
made an object (``OmegaConf.to_object``, which compose does): a bad value is one line before
anything runs or is written. Component names (objective, strategy, logger, task, likelihood, ...)
are registry keys, never import paths: plugins add to them, so the builder checks them against the
registry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from omegaconf import MISSING

from tfx.errors import RecipeError, RegistryError
from tfx.model.config import SPECIAL_TOKENS, ModelConfig
from tfx.model.lora import LORA_TARGETS
from tfx.registry import Registry


class DataSource(StrEnum):
    shards = "shards"  # WebDataset shards written by `tfx shard`
    h5ad = "h5ad"  # h5ad files read whole into memory


OnCorrupt = StrEnum("OnCorrupt", {"skip": "skip", "raise": "raise"})  # a shard that does not read


class Backbone(StrEnum):
    frozen = "frozen"  # only the task head (and adapters) train
    partial = "partial"  # also the last finetune.trainable_layers layers
    full = "full"


class Adapter(StrEnum):
    none = "none"
    lora = "lora"


class Export(StrEnum):
    merged = "merged"  # a plain checkpoint, adapters merged into the weights
    adapter = "adapter"  # adapter weights beside the init checkpoint


class MissingLabels(StrEnum):
    refuse = "refuse"  # a cell without a label stops the run before compute
    drop = "drop"  # such cells are left out, with one warning that counts them


class Accelerator(StrEnum):
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    mps = "mps"
    auto = "auto"


class _Precision(StrEnum):
    @classmethod
    def _missing_(cls, value):  # `trainer.precision=32` arrives as the number 32
        return cls.__members__.get(str(value))


# Lightning's precision settings (the names are what a recipe writes)
Precision = _Precision("Precision", {p: p for p in (
    "32", "64", "16", "bf16", "32-true", "64-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
    "transformer-engine", "transformer-engine-float16")})
HALF_PRECISIONS = frozenset(p for p in Precision if p.value.startswith(("16", "bf16")))


class WandbMode(StrEnum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, lt: float | None = None,
            le: float | None = None):
    """A numeric field with its bounds (None passes: the field's null means "not set")."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "lt": lt, "le": le})


def _check_number(path: str, value: Any, bounds: dict) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{path}={value} must be a finite number")
    rules = (("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b), ("lt", "<", lambda a, b: a < b),
             ("le", "<=", lambda a, b: a <= b))
    for key, sign, ok in rules:
        if key in bounds and bounds[key] is not None and not ok(value, bounds[key]):
            raise RecipeError(f"{path}={value} must be {sign} {bounds[key]}")


def check_bounds(node: Any, prefix: str = "") -> None:
    """Every bounded number of a schema dataclass and of those it holds, with the key's path."""
    for f in dataclasses.fields(node):
        value, path = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, ModelConfig):  # ModelConfig checks itself
            check_bounds(value, f"{path}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(path, value, f.metadata)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    _check_number(f"{path}[{i}]", item, f.metadata)


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
    source: DataSource = DataSource.shards
    shards: Any = None  # shards: a directory, manifest, glob or URL, or a list of them (one source each)
    val_shards: Any = None
    weights: Optional[list[float]] = bounded(None, ge=0)  # per-source mixing weights, one per entry of `shards`
    files: list[str] = field(default_factory=list)  # h5ad: files read whole into memory
    val_files: list[str] = field(default_factory=list)
    gene_col: str = "ensembl_id"
    # how counts are read; null: the init checkpoint's record (new models: the official defaults)
    gene_order: Optional[str] = None  # var_order | random | expression_sorted
    clip_counts: Optional[float] = None
    normalize_to_scale: Optional[float] = None
    token_budget: int = bounded(8192, ge=1)  # cells x padded length per batch, per device
    max_cells: int = bounded(64, ge=1)
    pack: bool = False  # several cells per row, token_budget // pack_row_len rows a batch
    pack_row_len: Optional[int] = bounded(None, ge=1)  # null: seq_len + aux tokens (the longest cell)
    shuffle_buffer: int = bounded(2000, ge=0)  # 0 or 1: no shuffling
    num_workers: int = bounded(0, ge=0)
    on_corrupt: OnCorrupt = OnCorrupt.skip  # a shard that does not read: skip (log and count) or raise
    max_corrupt_share: float = bounded(0.1, ge=0, le=1)  # skip: stop when more of a source's shards are corrupt


@dataclass
class TrainerSchema:
    accelerator: Accelerator = Accelerator.cpu
    devices: Any = 1  # a count, -1 (all), or "auto"
    num_nodes: int = bounded(1, ge=1)
    precision: Precision = Precision["32"]  # a half precision falls back to 32 on CPU (see compose)
    max_steps: int = bounded(200, ge=1)
    gradient_clip_val: Optional[float] = bounded(1.0, ge=0)  # 0 or null: no clipping
    accumulate_grad_batches: int = bounded(1, ge=1)
    log_every_n_steps: int = bounded(10, ge=1)
    val_check_interval: int = bounded(100, ge=1)
    limit_val_batches: int = bounded(8, ge=0)
    checkpoint_every_n_steps: int = bounded(100, ge=1)
    peak_tflops: Optional[float] = bounded(None, gt=0)  # per device, for MFU; null: Lightning's table for the GPU
    activation_checkpointing: bool = False

    def __post_init__(self):
        d = self.devices
        if not (d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1))):
            raise RecipeError(f"trainer.devices={d} must be a count (at least 1), -1 (all) or auto")
        if d == -1 and self.accelerator == Accelerator.cpu:
            raise RecipeError("trainer.devices=-1 (every GPU) has no meaning with trainer.accelerator=cpu; "
                              "set trainer.devices=N, the number of processes")


@dataclass
class StrategySchema:
    name: str = "auto"  # a strategies registry key: auto | ddp | deepspeed_zero1|2|3 | deepspeed_zero3_offload


@dataclass
class LoggerSchema:
    name: str = "csv"  # a loggers registry key: csv | wandb (a CSV log is always written)
    project: str = "tfx"
    mode: WandbMode = WandbMode.offline


@dataclass
class OptimSchema:
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.01, ge=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata={"ge": 0, "lt": 1})
    warmup_steps: int = bounded(100, ge=0)
    total_steps: Optional[int] = bounded(None, ge=1)  # length of the LR schedule; null: trainer.max_steps
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)

    def __post_init__(self):
        if len(self.betas) != 2:
            raise RecipeError(f"optim.betas={list(self.betas)} must be two numbers (beta1, beta2)")


@dataclass
class TaskSchema:
    name: str = "classification"  # a task registry key: classification | regression
    label_key: str = MISSING  # the obs column to predict (h5ad obs, or shard metadata)
    classes: Optional[list[str]] = None  # a classification's classes; null: every value in the training data
    missing_labels: MissingLabels = MissingLabels.refuse  # cells whose label_key value is missing (NaN, empty)


@dataclass
class LoraSchema:
    rank: int = bounded(8, ge=1)
    alpha: float = bounded(16.0, gt=0)
    dropout: float = bounded(0.0, ge=0, lt=1)
    # module-name suffixes: each block's attention q, k, v, out projections and feed-forward layers
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class FinetuneSchema:
    """How the backbone trains under a task head; the protein embedding table never does."""

    backbone: Optional[Backbone] = None  # null: frozen with an adapter, else partial
    trainable_layers: int = bounded(2, ge=1)  # partial: the last layers that train
    adapter: Adapter = Adapter.none
    lora: LoraSchema = field(default_factory=LoraSchema)
    export: Export = Export.merged  # how a LoRA run is exported


@dataclass
class Recipe:
    description: str = ""  # one line, shown by `tfx train --list`
    objective: str = "pretrain"  # an objectives registry key: pretrain | continue | finetune
    init: Optional[str] = None  # checkpoint directory to start from (continue, finetune)
    output_dir: str = MISSING
    seed: int = bounded(0, ge=0, lt=2**32)
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

    def __post_init__(self):
        check_bounds(self)
        if isinstance(self.output_dir, str) and not self.output_dir.strip():  # "" would be the current directory
            raise RecipeError("output_dir is empty; name the run's directory, e.g. output_dir=runs/mine")


def registered(registry: Registry, name: str, src: str) -> Any:
    """The entry a recipe names; a name nobody registered is one line naming the recipe file."""
    try:
        return registry.get(name)
    except RegistryError as err:
        raise RecipeError(f"{src}: {err}") from None


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="tfx_recipe", node=Recipe)
