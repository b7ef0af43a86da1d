"""What fine-tuning adds to a checkpoint directory; the reference ignores all of it.

- ``task.json`` + ``task_head.pt``: the task head served by ``tfx infer --outputs predictions``.
  task.json records the head's registry name, the task type, the label column and the classes in
  the order of the head's outputs; task_head.pt is the head's plain state_dict.
- ``adapter.json`` + ``adapter_weights.pt`` instead of ``model_weights.pt``: a LoRA fine-tune kept
  as adapters. adapter.json names the base checkpoint and the SHA-256 of its model_weights.pt;
  adapter_weights.pt holds the adapters and every entry that differs from the base (the task's
  new assay rows, layers trained outside the adapters). Loading verifies the base, then merges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tfx.atomic import save_tensors
from tfx.checkpoint.weights import load_weights
from tfx.errors import CheckpointError
import tfx.model.tasks  # noqa: F401  (registers the built-in heads)
from tfx.model.lora import split_adapters
from tfx.registry import TASKS

TASK_JSON, TASK_WEIGHTS = "task.json", "task_head.pt"
ADAPTER_JSON, ADAPTER_WEIGHTS = "adapter.json", "adapter_weights.pt"


@dataclass
class Task:
    name: str  # the head's registry name (TASKS)
    label_key: str  # the obs column it predicts
    module: nn.Module  # the TASKS entry: .head (the network), .classes, .categorical, .loss

    def record(self) -> dict:
        return {"task": self.name, "type": "classification" if self.module.categorical else "regression",
                "label_key": self.label_key, "classes": self.module.classes}


def _json(path: Path, what: str) -> dict:
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); restore the file or export the run again") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: expected a JSON object describing the {what}")
    return record


def write_task(task: Task, out_dir: Path) -> None:
    (out_dir / TASK_JSON).write_text(json.dumps(task.record(), indent=2))
    save_tensors({k: v.detach().cpu().contiguous() for k, v in task.module.state_dict().items()}, out_dir / TASK_WEIGHTS)


def read_task(ckpt_dir: Path, embed_dim: int) -> Task | None:
    """The checkpoint's task head, or None when it has none."""
    path = ckpt_dir / TASK_JSON
    if not path.exists():
        return None
    record = _json(path, "task")
    try:
        name, label_key, classes = record["task"], str(record["label_key"]), record["classes"]
    except KeyError as err:
        raise CheckpointError(f"{path}: no '{err.args[0]}' entry; export the fine-tuning run again") from None
    if name not in TASKS:
        raise CheckpointError(f"{path}: task head '{name}' is not registered ({', '.join(TASKS.names())}); "
                              "install the plugin that provides it")
    head = TASKS.get(name)(embed_dim, classes)
    try:
        head.load_state_dict(load_weights(ckpt_dir / TASK_WEIGHTS))
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt_dir / TASK_WEIGHTS}: does not fit {path} ({str(err).splitlines()[0]})") from None
    return Task(name, label_key, head.eval())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_adapter(out_dir: Path, base: dict, settings: dict, state: dict[str, torch.Tensor]) -> None:
    """``state``: the fine-tuned model's LoRA-wrapped state_dict; ``base``: {"path", "sha256"} of the
    checkpoint training started from. Writes only what differs from the base."""
    base_weights = load_weights(Path(base["path"]) / "model_weights.pt")
    plain, adapters = split_adapters(state)
    changed = {k: v for k, v in plain.items()
               if k not in base_weights or base_weights[k].shape != v.shape or not torch.equal(base_weights[k], v)}
    save_tensors({**changed, **adapters}, out_dir / ADAPTER_WEIGHTS)
    (out_dir / ADAPTER_JSON).write_text(json.dumps({"base": base, "lora": settings}, indent=2))


def adapter_base(ckpt_dir: Path) -> tuple[dict, dict, dict] | None:
    """(plain weights: the verified base with the fine-tune's changes, adapters, LoRA settings) of
    an adapter checkpoint; None for a plain one."""
    path = ckpt_dir / ADAPTER_JSON
    if not path.exists():
        return None
    record = _json(path, "adapter")
    try:
        base, settings = record["base"], record["lora"]
        base_dir, digest = Path(base["path"]), base["sha256"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: no base path/sha256 or lora settings ({err}); export the run again") from None
    weights_file = base_dir / "model_weights.pt"
    if not weights_file.exists():
        raise CheckpointError(f"{path}: its base checkpoint {base_dir} is missing; put it back there, or export "
                              "the fine-tuning run with finetune.export=merged")
    if file_sha256(weights_file) != digest:
        raise CheckpointError(f"{path}: {weights_file} is not the base these adapters were trained on "
                              "(SHA-256 differs); restore that checkpoint")
    changed = load_weights(ckpt_dir / ADAPTER_WEIGHTS)
    plain, adapters = split_adapters(changed)
    return {**load_weights(weights_file), **plain}, adapters, settings
