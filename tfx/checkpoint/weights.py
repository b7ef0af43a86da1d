"""Reading a weights file safely: ``weights_only`` loading, a plain state_dict of tensors or a clear error."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from tfx.errors import CheckpointError


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing; a checkpoint directory holds config.json, model_weights.pt, vocabs/")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: holds pickled objects, not a plain state_dict; tfx never unpickles code "
            "(export it with `tfx export` or save model.state_dict())"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch weights file (truncated, damaged or not written by "
                              f"torch.save: {type(err).__name__}); download or export it again") from None
    if isinstance(state, dict) and "state_dict" in state and not torch.is_tensor(state["state_dict"]):
        raise CheckpointError(f"{path}: a training checkpoint, not inference weights; run `tfx export RUN_DIR`")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors")
    return state
