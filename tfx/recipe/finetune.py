"""Fine-tuning: the task head (its classes from the training data), how the backbone trains, and
what export needs to merge LoRA adapters or keep them beside their verified base checkpoint. Which
parameters train is the fine-tuning objective's own setup (``tfx.train.objectives.finetune``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tfx.checkpoint import Checkpoint, Task
from tfx.checkpoint.finetuned import file_sha256
from tfx.errors import RecipeError
from tfx.recipe.data import task_classes
from tfx.recipe.schema import Adapter, Backbone, Export, FinetuneSchema, Recipe, registered
from tfx.registry import TASKS


def task(r: Recipe, ckpt: Checkpoint, src: str) -> Task:
    """The task head on the cell embedding, predicting ``task.label_key``."""
    t = r.task
    task_cls = registered(TASKS, t.name, src)
    return Task(t.name, t.label_key, task_cls(ckpt.model_cfg.embed_dim, task_classes(t, task_cls, r, ckpt, src)))


def settings(r: Recipe, src: str) -> FinetuneSchema:
    """The fine-tuning settings (each field's choices and bounds are checked by its type), with
    ``backbone`` null resolved: frozen under adapters, else partial."""
    f = r.finetune
    if f.export == Export.adapter and f.adapter != Adapter.lora:
        raise RecipeError(f"{src}: finetune.export=adapter keeps LoRA adapters; set finetune.adapter=lora")
    backbone = f.backbone or (Backbone.frozen if f.adapter == Adapter.lora else Backbone.partial)
    return dataclasses.replace(f, backbone=backbone)


def adapter_record(f: FinetuneSchema, init: str, src: str) -> dict | None:
    """What export needs to merge the adapters, or to keep them beside the verified base checkpoint."""
    if f.adapter != Adapter.lora:
        return None
    weights = Path(init).resolve() / "model_weights.pt"
    if f.export == Export.adapter and not weights.exists():
        raise RecipeError(f"{src}: finetune.export=adapter needs a base checkpoint with model_weights.pt and "
                          f"{init} has none (itself an adapter export?); use finetune.export=merged")
    base = {"path": str(weights.parent), "sha256": file_sha256(weights)} if weights.exists() else None
    return {"lora": dataclasses.asdict(f.lora), "export": f.export.value, "base": base}
