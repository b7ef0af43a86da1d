"""The TranscriptFormer model in plain torch (no Lightning, Hydra or data code)."""

from tfx.model import attention, heads, likelihoods, tasks  # noqa: F401  (register built-in components)
from tfx.model.config import DataConfig, ModelConfig
from tfx.model.transcriptformer import ModelOutput, SpecialIds, Tokens, TranscriptFormer

__all__ = ["DataConfig", "ModelConfig", "ModelOutput", "SpecialIds", "Tokens", "TranscriptFormer"]
