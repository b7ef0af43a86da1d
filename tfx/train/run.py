"""`tfx train RECIPE [overrides]`: compose -> build -> fit -> export; ``--check`` stops after build.

A run directory holds ``config.yaml`` (the composed recipe), ``checkpoint_template/`` (config.json,
vocabs/ and, for fine-tuning, task.json and adapter.json of the model being trained), ``checkpoints/`` (Lightning /
DeepSpeed checkpoints), ``logs/<n>/metrics.csv`` (one per start or resume, and wandb's offline run
when enabled) and, when the run ends, ``export/``: the inference checkpoint in the official layout.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig

from tfx.atomic import atomic_path, exclusive
from tfx.checkpoint import check_output_dir
from tfx.errors import CheckpointError, Interrupted, RecipeError, TfxError
from tfx.model.config import config_dict
from tfx.recipe import Build, build
from tfx.recipe.compose import recorded_objective
from tfx.outputs import check_writable
from tfx.registry import LOGGERS, STRATEGIES

log = logging.getLogger(__name__)


def _rank() -> int:
    env = os.environ
    return int(env.get("RANK", env.get("SLURM_PROCID", 0)))


def train(cfg: DictConfig, recipe_file: str = "recipe") -> Path:
    """Build everything the recipe names (every config, vocabulary and data error surfaces here,
    before compute), fit, export; returns the export directory."""
    run = build(cfg, recipe_file)
    return fit(run)


def check(cfg: DictConfig, recipe_file: str = "recipe") -> str:
    """`tfx train RECIPE --check`: build everything the recipe names (a new model on the meta device,
    so a TF-sized one takes seconds and no memory), set up the objective; fit nothing, write nothing.
    Returns the resolved recipe and the parameter count."""
    run = build(cfg, recipe_file, device="meta")
    modules = [run.checkpoint.model, *([run.checkpoint.task.module] if run.checkpoint.task else [])]
    run.objective.prepare(run.checkpoint.model)
    params = [p for m in modules for p in m.parameters()]
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return (f"{run.config_yaml.rstrip()}\n\nobjective {run.objective.name}: {sum(p.numel() for p in params):,} "
            f"parameters, {trainable:,} trainable")


def _flat(d: dict, prefix: str = "") -> dict:
    return {k: v for key, value in d.items()
            for k, v in (_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}).items()}


def check_run_dir(run: Build) -> None:
    """Before anything is written: ``output_dir`` is new, empty, or a run of the same model and
    objective (a resume); anything else is refused, so a run never overwrites another's files."""
    out = run.output_dir
    entries = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise RecipeError(f"output_dir={out}: exists and is not a directory; choose another output_dir")
    check_writable(out, f"output_dir={out}")
    if not entries:
        return
    template = out / "checkpoint_template" / "config.json"
    if not template.exists():
        raise RecipeError(f"output_dir={out}: not empty and not a tfx run directory ({', '.join(sorted(entries)[:3])}); "
                          "nothing there is changed, choose another output_dir")
    old = _flat(json.loads(template.read_text()))
    new = _flat(json.loads(json.dumps(config_dict(run.checkpoint.model_cfg, run.checkpoint.data_cfg))))
    old["objective"], new["objective"] = recorded_objective(out), run.objective.name
    old, new = {**dict.fromkeys(new), **old}, {**dict.fromkeys(old), **new}  # a key one side lacks: None
    diffs = [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(old) if old[k] != new[k]]
    if diffs:
        raise RecipeError(f"output_dir={out}: holds a run of another model or objective ({'; '.join(diffs[:3])}); "
                          "nothing there is changed, choose another output_dir (or delete it to start over)")
    check_output_dir(out / "export", overwrite=True, option="the run's")


def _check_readable(checkpoint: Path) -> None:
    """A checkpoint cut short (a killed save, a full disk) is one line, not a traceback from inside Lightning."""
    import torch

    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"{checkpoint}: unreadable (UnpicklingError), perhaps cut short; resume from an "
                                  "earlier checkpoint (resume=PATH) or start over (resume=null)") from None
        raise CheckpointError(f"{checkpoint}: holds Python objects besides weights (it is not weights-only), which "
                              "tfx never loads; resume from a checkpoint tfx wrote, or start over (resume=null)") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{checkpoint}: unreadable ({type(err).__name__}), perhaps cut short; resume from an "
                              "earlier checkpoint (resume=PATH) or start over (resume=null)") from None


def lightning_trainer(run: Build, callbacks: list):
    """``run.trainer`` as Lightning's Trainer: the strategy and loggers built from their registry names."""
    import lightning as L

    t, out = run.trainer, run.output_dir
    attempt = len(list((out / "logs").glob("*/metrics.csv")))  # one CSV per (re)start
    loggers = [LOGGERS.get("csv")(save_dir=out, version=attempt)]
    if t.logger.name != "csv":
        loggers.append(LOGGERS.get(t.logger.name)(save_dir=out, version=attempt, project=t.logger.project,
                                                  mode=t.logger.mode.value))
    validate = run.has_validation
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=STRATEGIES.get(t.strategy)(accelerator=t.accelerator), precision=t.precision,
        max_steps=t.max_steps, gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps, val_check_interval=t.val_check_interval if validate else None,
        limit_val_batches=t.limit_val_batches if validate else 0, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=loggers, default_root_dir=str(out), use_distributed_sampler=False,
        enable_model_summary=False, callbacks=callbacks, enable_progress_bar=sys.stderr.isatty(),
    )


def fit(run: Build) -> Path:
    """Train ``run``, export it; the export directory. A second run into the same output_dir is
    refused while this one holds it."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tfx.train.callbacks import GradNorm, LogProgress, StepBar, StopOnNonFiniteLoss, StopOnSignal, Throughput

    check_run_dir(run)
    L.seed_everything(run.seed, workers=True, verbose=False)
    module = run.objective.module(run.checkpoint.model)
    checkpoints = ModelCheckpoint(dirpath=str(run.output_dir / "checkpoints"),
                                  every_n_train_steps=run.trainer.checkpoint_every_n_steps, save_last=True, save_top_k=1)
    stop = StopOnSignal()
    shown = StepBar() if sys.stderr.isatty() else LogProgress()
    trainer = lightning_trainer(run, [checkpoints, Throughput(run.trainer.peak_tflops), GradNorm(), stop,
                                      StopOnNonFiniteLoss(), shown])
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0 and _rank() == 0
    existed = run.output_dir.exists()
    fresh = not existed or not any(run.output_dir.iterdir())
    try:
        with exclusive(run.output_dir, "run directory") if first else nullcontext():  # made once Lightning took the settings
            return _fit(run, trainer, module, stop)
    except (TfxError, OSError):  # refused or failed before a checkpoint (its data, a full disk): left as found
        if first and fresh and not (run.output_dir / "checkpoints").exists():
            shutil.rmtree(run.output_dir, ignore_errors=True)
            if existed:
                run.output_dir.mkdir()
        raise


def _fit(run: Build, trainer, module, stop) -> Path:
    from tfx.train.datamodule import RecipeData
    from tfx.train.export import write_export, write_template

    out = run.output_dir
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and _rank() == 0:
        write_template(run.checkpoint, out / "checkpoint_template", run.adapter)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(run.config_yaml)
    run.objective.before_fit(run, _rank())
    resume_file = run.resume is not None and Path(run.resume).is_file()
    if resume_file:
        _check_readable(Path(run.resume))
    trainer.fit(module, datamodule=RecipeData(run.sources), ckpt_path=run.resume,
                weights_only=True if resume_file else None)
    if stop.received is not None:
        last = out / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(str(last), weights_only=False)  # collective under DeepSpeed
        name = signal.Signals(stop.received).name
        raise Interrupted(f"{name} received: stopped at step {trainer.global_step} and saved {last}; "
                          "run the same command again to resume", 128 + stop.received)
    final = out / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(str(final), weights_only=False)  # collective under DeepSpeed: every rank writes its shard
    if trainer.is_global_zero:
        check_output_dir(out / "export", overwrite=True)  # as check_run_dir did: a user's file there is never replaced
        write_export(out, out / "export", final)
        log.info("exported the inference checkpoint to %s", out / "export")
        run.objective.after_fit(run, out / "export")
    trainer.strategy.barrier()
    return out / "export"
