"""`tfx train RECIPE [overrides]`: compose -> build -> fit -> export.

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
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import tfx.train.loggers  # noqa: F401  (registers the loggers)
import tfx.train.objectives  # noqa: F401  (registers the objectives)
import tfx.train.strategies  # noqa: F401  (registers the strategies)
from tfx.atomic import atomic_path
from tfx.checkpoint import check_output_dir
from tfx.errors import CheckpointError, Interrupted, RecipeError
from tfx.model.config import config_dict
from tfx.recipe import Build, build

log = logging.getLogger(__name__)


def _rank() -> int:
    env = os.environ
    return int(env.get("RANK", env.get("SLURM_PROCID", 0)))


def train(cfg: DictConfig, recipe_file: str = "recipe") -> Path:
    """Build everything the recipe names (every config, vocabulary and data error surfaces here,
    before compute), fit, export; returns the export directory."""
    run = build(cfg, recipe_file)
    return fit(run)


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
    if not entries:
        return
    template = out / "checkpoint_template" / "config.json"
    if not template.exists():
        raise RecipeError(f"output_dir={out}: not empty and not a tfx run directory ({', '.join(sorted(entries)[:3])}); "
                          "nothing there is changed, choose another output_dir")
    old = _flat(json.loads(template.read_text()))
    new = _flat(json.loads(json.dumps(config_dict(run.checkpoint.model_cfg, run.checkpoint.data_cfg))))
    old["objective"] = OmegaConf.load(out / "config.yaml").get("objective") if (out / "config.yaml").exists() else None
    new["objective"] = OmegaConf.create(run.config_yaml).get("objective")
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        raise RecipeError(f"output_dir={out}: holds a run of another model or objective ({'; '.join(diffs[:3])}); "
                          "nothing there is changed, choose another output_dir (or delete it to start over)")
    check_output_dir(out / "export", overwrite=True, option="the run's")


def _check_readable(checkpoint: Path) -> None:
    """A checkpoint cut short (a killed save, a full disk) is one line, not a traceback from inside Lightning."""
    import torch

    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{checkpoint}: unreadable ({type(err).__name__}), perhaps cut short; resume from an "
                              "earlier checkpoint (resume=PATH) or start over (resume=null)") from None


def fit(run: Build) -> Path:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tfx.train.callbacks import GradNorm, StopOnSignal, Throughput
    from tfx.train.datamodule import RecipeData
    from tfx.train.export import export_run, write_template

    check_run_dir(run)
    L.seed_everything(run.seed, workers=True, verbose=False)
    module = run.objective.module(run.checkpoint.model)
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and _rank() == 0:
        write_template(run.checkpoint, out / "checkpoint_template", run.adapter)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(run.config_yaml)
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=run.checkpoint_every_n_steps,
                                  save_last=True, save_top_k=1)
    stop = StopOnSignal()
    trainer = L.Trainer(**run.trainer, callbacks=[checkpoints, Throughput(run.peak_tflops), GradNorm(), stop])
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
        export_run(out, out / "export", final, overwrite=True)
        log.info("exported the inference checkpoint to %s", out / "export")
        run.objective.after_fit(run, out / "export")
    trainer.strategy.barrier()
    return out / "export"
