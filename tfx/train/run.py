"""`tfx train RECIPE [overrides]`: compose -> build -> fit -> export.

A run directory holds ``config.yaml`` (the composed recipe), ``checkpoint_template/`` (config.json,
vocabs/ and, for fine-tuning, task.json and adapter.json of the model being trained), ``checkpoints/`` (Lightning /
DeepSpeed checkpoints), ``logs/<n>/metrics.csv`` (one per start or resume, and wandb's offline run
when enabled) and, when the run ends, ``export/``: the inference checkpoint in the official layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

import tfx.train.loggers  # noqa: F401  (registers the loggers)
import tfx.train.objectives  # noqa: F401  (registers the objectives)
import tfx.train.strategies  # noqa: F401  (registers the strategies)
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


def fit(run: Build) -> Path:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tfx.train.callbacks import GradNorm, Throughput
    from tfx.train.datamodule import RecipeData
    from tfx.train.export import export_run, write_template

    L.seed_everything(run.seed, workers=True, verbose=False)
    module = run.objective.module(run.checkpoint.model)
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and _rank() == 0:
        (out / "config.yaml").write_text(run.config_yaml)
        write_template(run.checkpoint, out / "checkpoint_template", run.adapter)
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=run.checkpoint_every_n_steps,
                                  save_last=True, save_top_k=1)
    trainer = L.Trainer(**run.trainer, callbacks=[checkpoints, Throughput(run.peak_tflops), GradNorm()])
    run.objective.before_fit(run, _rank())
    trainer.fit(module, datamodule=RecipeData(run.sources), ckpt_path=run.resume)
    final = out / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(str(final), weights_only=False)  # collective under DeepSpeed: every rank writes its shard
    if trainer.is_global_zero:
        export_run(out, out / "export", final)
        log.info("exported the inference checkpoint to %s", out / "export")
        run.objective.after_fit(run, out / "export")
    trainer.strategy.barrier()
    return out / "export"
