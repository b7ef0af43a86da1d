"""DeepSpeed ZeRO checkpoint directory -> one fp32 state_dict, without running code from its files.

DeepSpeed's own consolidation (``deepspeed.utils.zero_to_fp32``) unpickles every shard with
``weights_only=False``: a crafted ``*_model_states.pt`` would run code. Here the same consolidation
runs with its ``torch.load`` made ``weights_only=True``, allowing only the DeepSpeed types its shards
hold (``SAFE_TYPES``, plain data classes and enums); a file holding anything else is refused.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from pathlib import Path
from unittest import mock

import torch

from tfx.errors import CheckpointError


def _safe_types() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _WeightsOnlyTorch:
    """``torch`` as zero_to_fp32 sees it: the same module, except that ``load`` is weights-only."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, weights_only=None, **kw):
        return torch.load(f, map_location=map_location, weights_only=True, **kw)


def consolidate_zero(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 state_dict of a DeepSpeed checkpoint directory (Lightning's ``*.ckpt/`` directory)."""
    from deepspeed.utils import zero_to_fp32

    checkpoint_dir = Path(checkpoint_dir)
    latest = checkpoint_dir / "latest"
    if not latest.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no 'latest' file; not a DeepSpeed checkpoint directory")
    tag = latest.read_text().strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag) or tag in (".", "..") or not (checkpoint_dir / tag).is_dir():
        raise CheckpointError(f"{latest}: names {tag!r}, not a checkpoint folder inside {checkpoint_dir}")
    try:
        with mock.patch.object(zero_to_fp32, "torch", _WeightsOnlyTorch()), \
                torch.serialization.safe_globals(_safe_types()), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{checkpoint_dir / tag}: holds pickled objects besides DeepSpeed's checkpoint "
                              f"types, refused (tfx never runs code from a file): {str(err).splitlines()[-1]}") from None
    except (RuntimeError, ValueError, KeyError, FileNotFoundError, EOFError) as err:
        raise CheckpointError(f"{checkpoint_dir / tag}: not a readable DeepSpeed checkpoint "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
