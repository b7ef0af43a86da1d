"""Metric loggers by registry name. A CSV log (``logs/<n>/metrics.csv``, one per start or resume)
is always written; ``wandb`` adds an offline run unless WANDB_MODE or the recipe says online."""

from __future__ import annotations

import os
from pathlib import Path

from tfx.registry import LOGGERS


@LOGGERS.register("csv")
def csv(save_dir: Path, version: int, **_):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(save_dir), name="logs", version=str(version))


@LOGGERS.register("wandb")
def wandb(save_dir: Path, version: int, project: str = "tfx", mode: str = "offline", **_):
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_MODE", mode)
    return WandbLogger(project=project, save_dir=str(Path(save_dir) / "logs"))
