"""How a checkpoint reads counts: recorded once in its config by whoever trained it (clip,
normalisation, gene order, aux columns) and read from there by inference, continuation and
fine-tuning. A value a user sets explicitly that differs from the record wins, with a warning."""

from __future__ import annotations

import dataclasses
import logging
import math

from tfx.checkpoint import Checkpoint
from tfx.errors import InputError
from tfx.model.config import DataConfig
from tfx.registry import TOKENIZERS
from tfx.tokenize import Tokenizer

log = logging.getLogger(__name__)

OPTIONS = ("clip_counts", "normalize_to_scale", "gene_order")


def check_preprocessing(cfg: DataConfig, source: str) -> None:
    clip = cfg.clip_counts
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise InputError(f"{source}: clip_counts {clip} must be a positive number (the official models use 30)")
    scale = cfg.normalize_to_scale
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise InputError(f"{source}: normalize_to_scale {scale} must be 0 (off) or a positive total count")
    if cfg.gene_order not in TOKENIZERS:
        raise InputError(f"{source}: gene order '{cfg.gene_order}' is not one of {', '.join(TOKENIZERS.names())}")


def resolve(recorded: DataConfig, requested: dict, source: str, recorded_by: str | None = "the checkpoint"
            ) -> DataConfig:
    """``recorded`` with the non-None ``requested`` values (keys of OPTIONS) that differ from it,
    each with a warning unless nothing recorded them (``recorded_by`` None: a new model's defaults)."""
    changes = {}
    for key in OPTIONS:
        value = requested.get(key)
        if value is not None and value != getattr(recorded, key):
            if recorded_by:
                log.warning("%s: %s=%s overrides %s (%s)", source, key, value, recorded_by, getattr(recorded, key))
            changes[key] = value
    resolved = dataclasses.replace(recorded, **changes)
    check_preprocessing(resolved, source)
    return resolved


def apply(ckpt: Checkpoint, requested: dict, source: str, recorded_by: str = "the checkpoint") -> Checkpoint:
    """The checkpoint, reading counts as recorded but for the ``requested`` values that differ."""
    ckpt.data_cfg = resolve(ckpt.data_cfg, requested, source, recorded_by)
    ckpt.model.likelihood.max_counts = ckpt.data_cfg.clip_counts  # the count likelihood truncates there
    return ckpt


def tokenizer(cfg: DataConfig, seq_len: int) -> Tokenizer:
    return Tokenizer(seq_len, order=cfg.gene_order, clip_counts=cfg.clip_counts,
                     normalize_to_scale=cfg.normalize_to_scale)
