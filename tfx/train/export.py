"""Training checkpoints -> the inference checkpoint (official layout), ZeRO shards consolidated.

`checkpoint_template/` (written when a run starts) holds config.json and vocabs/ of the model;
export adds the trained weights as model_weights.pt, checks that the result loads, and renames
it into place. A fine-tuning run also exports its task head (task_head.pt, task.json), which the
reference ignores.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from tfx.atomic import atomic_path
from tfx.checkpoint import Checkpoint, CheckpointError, check_output_dir, load_checkpoint, save_checkpoint
from tfx.checkpoint.zero import consolidate_zero


def write_template(ckpt: Checkpoint, path: Path, task=None, task_cfg=None) -> None:
    """The checkpoint without weights; a fine-tuning run adds task.json: the task's registry name,
    its label column and its classes in the order of the head's outputs."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        save_checkpoint(ckpt, Path(tmp) / "ckpt")
        with atomic_path(path) as out:
            shutil.copytree(Path(tmp) / "ckpt", out, ignore=shutil.ignore_patterns("model_weights.pt"))
            if task is not None:
                record = {"task": task_cfg.name, "label_key": task_cfg.label_key, "classes": task.classes}
                (out / "task.json").write_text(json.dumps(record, indent=2))


def _training_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The module's full fp32 state_dict from a Lightning checkpoint file or a DeepSpeed directory."""
    if checkpoint.is_dir():  # DeepSpeed: one shard per rank, consolidated with weights-only loading
        state = consolidate_zero(checkpoint)
        return {k.removeprefix("_forward_module."): v for k, v in state.items()}
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, TypeError) as err:
        raise CheckpointError(f"{checkpoint}: not a readable training checkpoint ({type(err).__name__}); "
                              "it may be truncated: export an earlier one, or train again") from None


def latest_checkpoint(run_dir: Path) -> Path:
    for name in ("final.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).exists():
            return run_dir / "checkpoints" / name
    raise CheckpointError(f"{run_dir}: no checkpoints/final.ckpt or last.ckpt; is it a tfx train run directory?")


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """``overwrite``: an existing checkpoint at ``out_dir`` may be replaced (nothing else ever is)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_output_dir(out_dir, overwrite)
    template = run_dir / "checkpoint_template"
    if not (template / "config.json").exists():
        raise CheckpointError(f"{template}: missing; export needs a run directory written by `tfx train`")
    state = _training_state(Path(checkpoint) if checkpoint else latest_checkpoint(run_dir))
    model_state = {k.removeprefix("model."): v.float() for k, v in state.items() if k.startswith("model.")}
    head_state = {k.removeprefix("task."): v.float() for k, v in state.items() if k.startswith("task.")}
    with atomic_path(out_dir) as tmp:
        shutil.copytree(template, tmp)
        torch.save(model_state, tmp / "model_weights.pt")
        if head_state:
            torch.save(head_state, tmp / "task_head.pt")
        load_checkpoint(tmp)  # what is exported must load
    return out_dir
