"""``finetune``: a task head (classification or regression, a TASKS entry) on the cell embedding.
The backbone is frozen, partly or fully trained (``finetune.backbone``), optionally with LoRA
adapters (``finetune.adapter=lora``, the ``peft`` library); the protein embedding table never
trains."""

from __future__ import annotations

import dataclasses
import logging

from tfx.model.lora import add_lora, is_adapter
from tfx.recipe import Objective
from tfx.recipe.schema import Adapter, Backbone
from tfx.registry import OBJECTIVES

log = logging.getLogger(__name__)


@OBJECTIVES.register("finetune")
class Finetune(Objective):
    starts_from_checkpoint = True
    needs_task = True

    def prepare(self, model) -> None:
        f, head = self.settings.finetune, self.settings.task.module
        backbone_size = sum(p.numel() for p in model.parameters())
        if f.adapter == Adapter.lora:
            add_lora(model, dataclasses.asdict(f.lora))
        freeze_backbone(model, f.backbone, f.trainable_layers)
        trainable = sum(p.numel() for m in (model, head) for p in m.parameters() if p.requires_grad)
        log.info("fine-tuning %d parameters (%.3f%% of the backbone's %d): backbone %s, adapter %s", trainable,
                 100 * trainable / backbone_size, backbone_size, f.backbone.value, f.adapter.value)

    def module(self, model):
        from tfx.train.module import TaskModule

        self.prepare(model)
        return TaskModule(model, self.settings.task.module, self.settings.optim, self.settings.total_steps)


def freeze_backbone(model, policy: Backbone, trainable_layers: int = 2) -> None:
    """``frozen``: only the task head (and LoRA adapters) train; ``partial``: also the last layers;
    ``full``: all. The protein table never trains."""
    layers = model.transformer_encoder.encoder_layers
    trained = {id(p) for layer in layers[len(layers) - trainable_layers:] for p in layer.parameters()}
    table = model.gene_embeddings.embedding.weight
    for name, p in model.named_parameters():
        if not is_adapter(name):
            p.requires_grad = p is not table and (policy == Backbone.full or
                                                  (policy == Backbone.partial and id(p) in trained))
