"""Training checkpoints -> the inference checkpoint (official layout), ZeRO shards consolidated.

`checkpoint_template/` (written when a run starts) holds config.json and vocabs/ of the model;
export adds the trained weights as model_weights.pt, checks that the result loads, and renames
it into place. A fine-tuning run also exports its task head (task.json, task_head.pt), which the
reference ignores; LoRA adapters are merged into model_weights.pt, or kept as adapter weights beside
the base checkpoint (``finetune.export=adapter``).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

from tfx.atomic import atomic_path, copy_tree, save_tensors
from tfx.checkpoint import Checkpoint, CheckpointError, check_output_dir, load_checkpoint, save_checkpoint
from tfx.checkpoint.finetuned import ADAPTER_JSON, TASK_WEIGHTS, write_adapter
from tfx.checkpoint.zero import consolidate_zero
from tfx.model.lora import merge_adapters, split_adapters


def write_template(ckpt: Checkpoint, path: Path, adapter: dict | None = None) -> None:
    """The checkpoint without weights (a fine-tuning run's task.json included) and, for a LoRA run,
    ``adapter.json``: what export needs to merge the adapters or keep them beside their base."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        save_checkpoint(ckpt, Path(tmp) / "ckpt")
        with atomic_path(path) as out:
            copy_tree(Path(tmp) / "ckpt", out, ignore=("model_weights.pt", TASK_WEIGHTS))
            if adapter is not None:
                (out / ADAPTER_JSON).write_text(json.dumps(adapter, indent=2))


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
               overwrite: bool = False, lora_form: str | None = None) -> Path:
    """``overwrite``: an existing checkpoint at ``out_dir`` may be replaced (nothing else ever is);
    ``lora_form``: merged | adapter, for a LoRA run (default: what its recipe chose). ``out_dir`` may
    not lie in the run it reads, its ``export/`` included (`tfx train` fills that one)."""
    check_output_dir(out_dir, overwrite, inputs=[run_dir])
    return write_export(Path(run_dir), Path(out_dir), checkpoint, lora_form)


def write_export(run_dir: Path, out_dir: Path, checkpoint: str | Path | None = None,
                 lora_form: str | None = None) -> Path:
    """``export_run`` once its output is checked: `tfx train` writes its own ``export/`` with it."""
    template = run_dir / "checkpoint_template"
    if not (template / "config.json").exists():
        raise CheckpointError(f"{template}: missing; export needs a run directory written by `tfx train`")
    adapter = json.loads((template / ADAPTER_JSON).read_text()) if (template / ADAPTER_JSON).exists() else None
    form = (lora_form or adapter["export"]) if adapter else None
    if lora_form and not adapter:
        raise CheckpointError(f"{run_dir}: not a LoRA fine-tuning run; drop --lora-form")
    if form == "adapter" and not adapter["base"]:
        raise CheckpointError(f"{run_dir}: its init checkpoint has no model_weights.pt to keep adapters beside; "
                              "export with --lora-form merged")
    state = _training_state(Path(checkpoint) if checkpoint else latest_checkpoint(run_dir))
    model_state = {k.removeprefix("model."): v.float() for k, v in state.items() if k.startswith("model.")}
    head_state = {k.removeprefix("task."): v.float() for k, v in state.items() if k.startswith("task.")}
    with atomic_path(out_dir) as tmp:
        copy_tree(template, tmp, ignore=(ADAPTER_JSON,))
        if head_state:
            save_tensors(head_state, tmp / TASK_WEIGHTS)
        if adapter is None:
            save_tensors(model_state, tmp / "model_weights.pt")
        elif form == "merged":
            plain, adapters = split_adapters(model_state)
            save_tensors(plain, tmp / "model_weights.pt")
            merged = merge_adapters(load_checkpoint(tmp).model, adapter["lora"], adapters)
            save_tensors(merged.state_dict(), tmp / "merged.pt")  # the loaded model still maps the plain file
            os.replace(tmp / "merged.pt", tmp / "model_weights.pt")
        else:
            write_adapter(tmp, adapter["base"], adapter["lora"], model_state)
        load_checkpoint(tmp)  # what is exported must load
    return out_dir
