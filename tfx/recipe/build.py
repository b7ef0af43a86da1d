"""The one builder: a composed recipe -> the checkpoint to start from, the data, the objective and
the trainer's settings. It is the only code that reads the recipe; what it builds gets typed
values. Objectives, strategies, loggers and tasks come from the registry (``tfx.train`` registers
the built-in ones), so this layer imports neither Lightning nor DeepSpeed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from tfx.checkpoint import Checkpoint, Task, load_checkpoint
from tfx.checkpoint.finetuned import file_sha256
from tfx.checkpoint.io import build_model
from tfx.checkpoint.surgery import add_aux_values, add_species
from tfx.data import preprocess
from tfx.data.anndata import CellReader
from tfx.data.labels import LabelCodec, discover_classes
from tfx.data.loader import ShardLoader, manifest_classes, resolve_urls
from tfx.data.memory import CellBatches, read_cells
from tfx.tokenize.batches import BatchSpec
from tfx.errors import ConfigError, RecipeError
from tfx.model.config import DataConfig
from tfx.recipe.schema import FinetuneSchema, Recipe, TaskSchema
from tfx.registry import LOGGERS, OBJECTIVES, STRATEGIES, TASKS
from tfx.vocab import GeneVocab, species_for_file
from tfx.vocab.aux import official_assay_vocab

log = logging.getLogger(__name__)


@dataclass
class Build:
    """Everything a run needs, built from one recipe."""

    output_dir: Path
    seed: int
    checkpoint: Checkpoint  # .task: the fine-tuning task head, or None
    objective: Any  # an OBJECTIVES entry, given its typed settings
    sources: Callable[[int, int], tuple[Any, dict[str, Any]]]  # (rank, world) -> (train, {name: held-out})
    has_validation: bool
    trainer: dict = field(default_factory=dict)  # Lightning Trainer arguments, strategy and loggers built
    checkpoint_every_n_steps: int = 100
    peak_tflops: float | None = None
    resume: str | None = None
    config_yaml: str = ""  # the composed recipe, as the run directory records it
    adapter: dict | None = None  # LoRA fine-tuning: settings, export form and base checkpoint, for export


def build(cfg: DictConfig, src: str = "recipe") -> Build:
    """``src``: the recipe file, named in every error."""
    try:
        r: Recipe = OmegaConf.to_object(cfg)
    except ConfigError as err:  # ModelConfig checks itself as it is built
        raise RecipeError(f"{src}: model: {err}") from None
    objective_cls = _registered(OBJECTIVES, r.objective, "objective", src)
    if objective_cls.starts_from_checkpoint and not r.init:
        raise RecipeError(f"{src}: objective '{r.objective}' starts from a checkpoint; set init=CHECKPOINT_DIR")
    if not objective_cls.starts_from_checkpoint and r.init:
        raise RecipeError(f"{src}: objective '{r.objective}' trains a new model, init={r.init} is not read; "
                          "use a continue/ recipe (objective=continue) to start from a checkpoint")
    if objective_cls.needs_task and r.task is None:
        raise RecipeError(f"{src}: objective '{r.objective}' needs a task; add task=celltype (or task=regression)")
    _seed(r.seed)  # a new model's random weights
    ckpt = _checkpoint(r, src)
    ckpt.model.transformer_encoder.checkpointing = r.trainer.activation_checkpointing
    ckpt.task = Task(r.task.name, r.task.label_key, _task(r.task, r, ckpt, src)) if objective_cls.needs_task else None
    finetune = _finetune(r, src) if objective_cls.needs_task else None
    objective = objective_cls(optim=r.optim, freeze=list(r.freeze), task=ckpt.task, finetune=finetune,
                              max_steps=r.trainer.max_steps)
    out = Path(r.output_dir)
    strategy = _registered(STRATEGIES, r.strategy.name, "strategy", src)(accelerator=r.trainer.accelerator)
    attempt = len(list((out / "logs").glob("*/metrics.csv")))  # one CSV per (re)start
    loggers = [LOGGERS.get("csv")(save_dir=out, version=attempt)]
    if r.logger.name != "csv":
        loggers.append(_registered(LOGGERS, r.logger.name, "logger", src)(
            save_dir=out, version=attempt, project=r.logger.project, mode=r.logger.mode))
    has_val = bool(r.data.val_files if r.data.source == "h5ad" else r.data.val_shards)
    t = r.trainer
    trainer = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
        precision=t.precision, max_steps=t.max_steps, gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches, log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval if has_val else None,
        limit_val_batches=t.limit_val_batches if has_val else 0, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=loggers, default_root_dir=str(out), use_distributed_sampler=False,
        enable_model_summary=False,
    )
    return Build(
        output_dir=out, seed=r.seed, checkpoint=ckpt, objective=objective, sources=_sources(r, ckpt, src), has_validation=has_val, trainer=trainer,
        checkpoint_every_n_steps=t.checkpoint_every_n_steps, peak_tflops=t.peak_tflops,
        resume=_resume(r.resume, out, src), config_yaml=OmegaConf.to_yaml(cfg),
        adapter=_adapter_record(finetune, r.init, src) if finetune else None,
    )


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _registered(registry, name: str, what: str, src: str):
    if name not in registry:
        raise RecipeError(f"{src}: unknown {what} '{name}' (registered: {', '.join(registry.names())})")
    return registry.get(name)


def _requested(r: Recipe) -> dict:
    return {"clip_counts": r.data.clip_counts, "normalize_to_scale": r.data.normalize_to_scale,
            "gene_order": r.data.gene_order}


def _checkpoint(r: Recipe, src: str) -> Checkpoint:
    """The model training starts from, reading counts as the recipe (or the init checkpoint) says."""
    if r.init:
        ckpt = load_checkpoint(r.init)
        ckpt.model.train()
        ckpt = preprocess.apply(ckpt, f"{src}: data", f"init checkpoint {r.init}", **_requested(r))
    else:
        import torch

        files = _vocab_files(r, src)
        data_cfg = DataConfig(esm2_mappings=[os.path.basename(f) for f in files],
                              special_tokens=list(r.vocab.special_tokens), aux_cols=list(r.vocab.aux_cols),
                              gene_col_name=r.data.gene_col)
        data_cfg = preprocess.resolve(data_cfg, f"{src}: data", None, **_requested(r))
        vocab, table = GeneVocab.from_files(data_cfg.special_tokens, files)
        aux = {col: official_assay_vocab() for col in data_cfg.aux_cols}
        model = build_model(r.model, data_cfg, vocab, torch.as_tensor(table), aux)
        ckpt = Checkpoint(model, vocab, aux, r.model, data_cfg)
    if r.vocab.add:
        ckpt = add_species(ckpt, list(r.vocab.add))
    if r.vocab.add_assays:
        ckpt = add_aux_values(ckpt, "assay", list(r.vocab.add_assays))
    return ckpt


def _finetune(r: Recipe, src: str) -> FinetuneSchema:
    """The fine-tuning settings, checked; ``backbone`` null resolved."""
    f = r.finetune
    for key, value, allowed in (("backbone", f.backbone, (None, "frozen", "partial", "full")),
                                ("adapter", f.adapter, ("none", "lora")), ("export", f.export, ("merged", "adapter"))):
        if value not in allowed:
            raise RecipeError(f"{src}: finetune.{key}={value} is not one of {', '.join(a for a in allowed if a)}")
    if f.export == "adapter" and f.adapter != "lora":
        raise RecipeError(f"{src}: finetune.export=adapter keeps LoRA adapters; set finetune.adapter=lora")
    lora = f.lora
    if lora.rank < 1 or not lora.alpha > 0 or not 0 <= lora.dropout < 1:
        raise RecipeError(f"{src}: finetune.lora needs rank >= 1, alpha > 0 and 0 <= dropout < 1 "
                          f"(got rank={lora.rank}, alpha={lora.alpha}, dropout={lora.dropout})")
    if f.trainable_layers < 1:
        raise RecipeError(f"{src}: finetune.trainable_layers={f.trainable_layers} must be at least 1 (the last layers "
                          "that train under backbone=partial)")
    backbone = f.backbone or ("frozen" if f.adapter == "lora" else "partial")
    return dataclasses.replace(f, backbone=backbone)


def _adapter_record(f: FinetuneSchema, init: str, src: str) -> dict | None:
    """What export needs to merge the adapters, or to keep them beside the verified base checkpoint."""
    if f.adapter != "lora":
        return None
    weights = Path(init).resolve() / "model_weights.pt"
    if f.export == "adapter" and not weights.exists():
        raise RecipeError(f"{src}: finetune.export=adapter needs a base checkpoint with model_weights.pt and "
                          f"{init} has none (itself an adapter export?); use finetune.export=merged")
    base = {"path": str(weights.parent), "sha256": file_sha256(weights)} if weights.exists() else None
    return {"lora": dataclasses.asdict(f.lora), "export": f.export, "base": base}


def _vocab_files(r: Recipe, src: str) -> list[str]:
    """vocab.embeddings, in the preset's species order when the recipe names a preset."""
    files = list(r.vocab.embeddings)
    if not files:
        raise RecipeError(f"{src}: vocab.embeddings lists no gene embedding file; set vocab.embeddings=[A_gene.h5,...]")
    if r.vocab.species is None:
        return files
    given = {species_for_file(Path(f).name): f for f in files}
    missing = [s for s in r.vocab.species if s not in given]
    if missing:
        raise RecipeError(f"{src}: the {r.vocab.preset} vocabulary has {len(r.vocab.species)} species and "
                          f"vocab.embeddings lacks {', '.join(missing)}; add {missing[0]}_gene.h5")
    extra = [s for s in given if s not in r.vocab.species]
    if extra:
        raise RecipeError(f"{src}: {', '.join(extra)} is not a species of the {r.vocab.preset} vocabulary; "
                          "drop it, or choose vocab=default for a species set of your own")
    return [given[s] for s in r.vocab.species]


def _shard_specs(spec, what: str, src: str) -> dict[str, str | list[str]]:
    """{source name: shard spec}; a directory or file is named by its last path part."""
    if spec is None:
        return {}
    specs = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not all(isinstance(s, str) for s in specs):
        raise RecipeError(f"{src}: {what} must be a path or URL, or a list of them")
    names = [Path(s.rstrip("/")).name or f"source{i}" for i, s in enumerate(specs)]
    if len(set(names)) < len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return dict(zip(names, specs))


def _task(t: TaskSchema, r: Recipe, ckpt: Checkpoint, src: str):
    """The task head, its classes read from the training data's label column."""
    task_cls = _registered(TASKS, t.name, "task", src)
    classes = None
    if getattr(task_cls, "categorical", True):
        if t.classes:
            values = list(t.classes)
        elif r.data.source == "shards":
            values = manifest_classes(list(_shard_specs(r.data.shards, "data.shards", src).values()), t.label_key)
        else:
            values = []
            for path in r.data.files:
                reader = CellReader(path, ckpt.vocab.lookup, gene_col=r.data.gene_col, labels=LabelCodec(t.label_key))
                values += list(reader.obs[t.label_key])
                reader.close()
        classes = discover_classes(values, t.label_key, src)
    return task_cls(ckpt.model_cfg.embed_dim, classes)


def _sources(r: Recipe, ckpt: Checkpoint, src: str):
    d = r.data
    seq_len, n_aux = ckpt.model_cfg.seq_len, len(ckpt.aux_vocabs)
    spec = BatchSpec(d.token_budget, d.max_cells, (d.pack_row_len or seq_len + n_aux) if d.pack else 0)
    labels = LabelCodec(ckpt.task.label_key, ckpt.task.module.classes) if ckpt.task else None
    prep = preprocess.preprocessing(ckpt)
    if d.source == "shards":
        train_specs = _shard_specs(d.shards, "data.shards", src)
        if not train_specs:
            raise RecipeError(f"{src}: data.shards names no shards; set data.shards=DIR (tfx shard output)")
        weights = list(d.weights) if d.weights else [1.0] * len(train_specs)
        if len(weights) != len(train_specs):
            raise RecipeError(f"{src}: data.weights has {len(weights)} entries for {len(train_specs)} data.shards sources")
        val_specs = _shard_specs(d.val_shards, "data.val_shards", src)
        for s in (*train_specs.values(), *val_specs.values()):
            resolve_urls(s)  # a missing path or a refused manifest stops the run before compute

        def sources(rank: int, world: int):
            def loader(sources: dict, seed: int) -> ShardLoader:
                return ShardLoader(sources, ckpt.vocab, prep, spec, aux_vocabs=ckpt.aux_vocabs, labels=labels,
                                   shuffle_buffer=d.shuffle_buffer, seed=seed, rank=rank, world_size=world,
                                   num_workers=d.num_workers, on_corrupt=d.on_corrupt,
                                   max_corrupt_share=d.max_corrupt_share)

            train = loader({n: {"urls": u, "weight": w} for (n, u), w in zip(train_specs.items(), weights)}, r.seed)
            return train, {n: loader({n: {"urls": u}}, r.seed + 1) for n, u in val_specs.items()}

        return sources
    if d.source != "h5ad":
        raise RecipeError(f"{src}: data.source '{d.source}' is not one of shards, h5ad")
    if not d.files:
        raise RecipeError(f"{src}: data.files lists no h5ad file; set data.files=[cells.h5ad]")

    def sources(rank: int, world: int):
        def batches(files, seed):
            cells, aux, encoded = read_cells(files, ckpt.vocab.lookup, ckpt.aux_vocabs, d.gene_col, labels)
            return CellBatches(cells, aux, ckpt.vocab.pad, prep, spec, labels=encoded, seed=seed, rank=rank,
                               world_size=world)

        train = batches(d.files, r.seed)
        return train, {Path(f).stem: batches([f], r.seed + 1) for f in d.val_files}

    return sources


def _resume(resume: str | None, out: Path, src: str) -> str | None:
    if not resume:
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise RecipeError(f"{src}: resume={resume}: no such checkpoint")
    return str(resume)
