"""The one builder: a composed recipe -> the checkpoint to start from, the data, the objective and
the trainer's settings, every value typed. It is the only code that reads the recipe, and it checks
everything (registry names included) before anything runs or is written. Reading it top to bottom:
the model (``model.py``), the fine-tuning task and settings (``finetune.py``), the objective (a
registry entry, ``objective.py``), the data (``data.py``), the trainer. Objectives, strategies and
loggers come from the registry, which imports ``tfx.train``'s built-in ones on first use, so this
layer imports neither Lightning nor DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tfx.checkpoint import Checkpoint
from tfx.errors import RecipeError
from tfx.options import check_device_count
from tfx.outputs import check_outside
from tfx.recipe import data, finetune, model
from tfx.recipe.compose import typed
from tfx.recipe.objective import Objective, ObjectiveSettings
from tfx.recipe.schema import Accelerator, DataSource, LoggerSchema, Recipe, TrainerSchema, registered
from tfx.registry import LOGGERS, OBJECTIVES, STRATEGIES


@dataclass
class TrainerSettings:
    """How the trainer runs; ``tfx.train`` maps it to Lightning's Trainer."""

    accelerator: str
    devices: int | str  # a count, -1 (all) or "auto"
    num_nodes: int
    precision: str  # as Lightning names it: "32", "bf16-mixed", ...
    max_steps: int
    gradient_clip_val: float | None
    accumulate_grad_batches: int
    log_every_n_steps: int
    val_check_interval: int
    limit_val_batches: int
    checkpoint_every_n_steps: int
    peak_tflops: float | None  # per device, for MFU; None: Lightning's table for the GPU
    strategy: str  # a STRATEGIES key
    logger: LoggerSchema  # a LOGGERS key and its settings; a CSV log is always written too


@dataclass
class Build:
    """Everything a run needs, built from one recipe."""

    output_dir: Path
    seed: int
    checkpoint: Checkpoint  # .task: the fine-tuning task head, or None
    objective: Objective
    sources: Callable[[int, int], tuple[Any, dict[str, Any]]]  # (rank, world) -> (train, {name: held-out})
    has_validation: bool
    trainer: TrainerSettings
    resume: str | None = None
    config_yaml: str = ""  # the composed recipe, as the run directory records it
    adapter: dict | None = None  # LoRA fine-tuning: settings, export form and base checkpoint, for export


def build(cfg: DictConfig, src: str = "recipe", device: str | None = None) -> Build:
    """``src``: the recipe file, named in every error. ``device="meta"``: a new model is built
    without memory for its weights (``tfx train --check``); such a build does not train."""
    r: Recipe = typed(cfg, src)
    objective_cls = registered(OBJECTIVES, r.objective, src)
    if not (isinstance(objective_cls, type) and issubclass(objective_cls, Objective)):
        raise RecipeError(f"{src}: objective '{r.objective}' is registered by {objective_cls!r}, not an Objective")
    objective_cls.check(r, src)
    registered(STRATEGIES, r.strategy.name, src)
    registered(LOGGERS, r.logger.name, src)
    ft = finetune.settings(r, src) if objective_cls.needs_task else None
    model.seed(r.seed)  # a new model's random weights
    ckpt = model.checkpoint(r, src, device)
    ckpt.task = finetune.task(r, ckpt, src) if objective_cls.needs_task else None
    objective = objective_cls(ObjectiveSettings(r.objective, r.optim, r.optim.total_steps or r.trainer.max_steps,
                                                list(r.freeze), ckpt.task, ft))
    out = Path(r.output_dir)
    check_outside(out, _inputs(r), f"output_dir={out}")
    if device != "meta":  # the recipe's own errors first; --check may run where the training will not (a login node)
        _check_devices(r.trainer, src)
    return Build(
        output_dir=out, seed=r.seed, checkpoint=ckpt, objective=objective, sources=data.sources(r, ckpt, src),
        has_validation=bool(r.data.val_files if r.data.source == DataSource.h5ad else r.data.val_shards),
        trainer=_trainer(r), resume=_resume(r.resume, out, src), config_yaml=OmegaConf.to_yaml(cfg),
        adapter=finetune.adapter_record(ft, r.init, src) if ft else None,
    )


def _inputs(r: Recipe) -> list[str]:
    """The files and directories a run reads (globs and URLs are never an output's parent)."""
    shards = [s for entry in (r.data.shards, r.data.val_shards) if entry
              for s in (entry if isinstance(entry, (list, ListConfig)) else [entry])]
    return [*map(str, shards), *r.data.files, *r.data.val_files, *r.vocab.embeddings, *r.vocab.add,
            *([r.init] if r.init else [])]


def _check_devices(t: TrainerSchema, src: str) -> None:
    """A device count beyond this machine's: refused before any process starts (on CPU each device
    is a process, and Lightning would start them all). trainer.devices counts one machine's;
    trainer.num_nodes the machines."""
    import torch

    if not isinstance(t.devices, int) or t.devices < 1:  # auto, -1: whatever the machine has
        return
    gpu = t.accelerator in (Accelerator.gpu, Accelerator.cuda) or (t.accelerator == Accelerator.auto
                                                                    and torch.cuda.is_available())
    if gpu or (t.accelerator in (Accelerator.cpu, Accelerator.auto) and not torch.backends.mps.is_available()):
        check_device_count(t.devices, gpu, f"{src}: trainer.devices={t.devices}",
                           "trainer.devices={have} or fewer (per machine; trainer.num_nodes counts machines)",
                           no_gpu="set trainer.accelerator=cpu, or run where the GPUs are", error=RecipeError)


def _trainer(r: Recipe) -> TrainerSettings:
    t = r.trainer
    return TrainerSettings(
        accelerator=t.accelerator.value, devices=t.devices, num_nodes=t.num_nodes, precision=t.precision.value,
        max_steps=t.max_steps, gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps, val_check_interval=t.val_check_interval,
        limit_val_batches=t.limit_val_batches, checkpoint_every_n_steps=t.checkpoint_every_n_steps,
        peak_tflops=t.peak_tflops, strategy=r.strategy.name, logger=r.logger,
    )


def _resume(resume: str | None, out: Path, src: str) -> str | None:
    if not resume:
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise RecipeError(f"{src}: resume={resume}: no such checkpoint")
    return str(resume)
