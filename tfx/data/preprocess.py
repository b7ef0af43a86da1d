"""How a checkpoint reads counts: recorded once in its config by whoever trained it (clip,
normalisation, gene order) and read from there, as a ``Preprocessing``, by training, inference,
scoring, sampling and prompting. A value a user sets explicitly that differs from the record
wins, with a warning."""

from __future__ import annotations

import dataclasses
import logging

from tfx.checkpoint import Checkpoint
from tfx.errors import ConfigError, InputError
from tfx.model.config import DataConfig
from tfx.tokenize import Preprocessing

log = logging.getLogger(__name__)


def resolve(recorded: DataConfig, source: str, recorded_by: str | None = "the checkpoint", *,
            gene_order: str | None = None, clip_counts: float | None = None,
            normalize_to_scale: float | None = None) -> DataConfig:
    """``recorded`` with the given (non-None) values that differ from it, each with a warning unless
    nothing recorded them (``recorded_by`` None: a new model's defaults)."""
    requested = {"gene_order": gene_order, "clip_counts": clip_counts, "normalize_to_scale": normalize_to_scale}
    changes = {key: value for key, value in requested.items() if value is not None and value != getattr(recorded, key)}
    for key, value in changes.items():
        if recorded_by:
            log.warning("%s: %s=%s overrides %s (%s)", source, key, value, recorded_by, getattr(recorded, key))
    resolved = dataclasses.replace(recorded, **changes)
    try:
        Preprocessing.of(resolved, 1)  # checks every value
    except ConfigError as err:
        raise InputError(f"{source}: {err}") from None
    return resolved


def apply(ckpt: Checkpoint, source: str, recorded_by: str = "the checkpoint", **requested) -> Checkpoint:
    """The checkpoint, reading counts as recorded but for the ``requested`` values that differ."""
    ckpt.data_cfg = resolve(ckpt.data_cfg, source, recorded_by, **requested)
    ckpt.model.likelihood.max_counts = ckpt.data_cfg.clip_counts  # the count likelihood truncates there
    return ckpt


def preprocessing(ckpt: Checkpoint) -> Preprocessing:
    """How ``ckpt`` turns raw counts into model input: the one road for every consumer."""
    return Preprocessing.of(ckpt.data_cfg, ckpt.model_cfg.seq_len)
