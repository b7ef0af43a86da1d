"""Objectives: what a run optimises, behind one interface, chosen by the recipe's ``objective``.

- ``pretrain``: a new model (random weights) learns next gene + counts.
- ``continue``: the same from a checkpoint (official releases included), optionally with new
  species; held-out likelihood per validation set before and after goes to
  ``continuation_report.json``.
- ``finetune``: a task head on the cell embedding (labels from an obs column), the backbone
  frozen, partly or fully trained, optionally with LoRA adapters.

Lightning is imported only when a module is built, so listing them (``tfx registry``) stays light.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from tfx.registry import OBJECTIVES

log = logging.getLogger(__name__)


@OBJECTIVES.register("pretrain")
class Pretrain:
    starts_from_checkpoint = False
    needs_task = False

    def __init__(self, *, optim, max_steps: int, freeze=(), task=None, finetune=None):
        self.optim, self.freeze, self.task, self.finetune = optim, list(freeze), task, finetune
        self.total_steps = optim.total_steps or max_steps

    def module(self, model):
        from tfx.train.module import PretrainModule

        for name, p in model.named_parameters():  # parameter-name prefixes kept fixed
            if any(name.startswith(prefix) for prefix in self.freeze):
                p.requires_grad = False
        return PretrainModule(model, self.optim, self.total_steps)

    def before_fit(self, run, rank: int) -> None:
        pass

    def after_fit(self, run, export_dir: Path) -> None:
        pass


@OBJECTIVES.register("continue")
class Continue(Pretrain):
    starts_from_checkpoint = True

    def before_fit(self, run, rank: int) -> None:
        """Held-out losses of the starting checkpoint (rank 0 of a fresh run with validation sets)."""
        self._sets = self._before = None
        if run.has_validation and run.resume is None and rank == 0:
            self._sets = run.sources(0, 1)[1]
            self._before = held_out(run.checkpoint.model, self._sets)

    def after_fit(self, run, export_dir: Path) -> None:
        if self._before is None:
            return
        from tfx.checkpoint import load_checkpoint

        after = held_out(load_checkpoint(export_dir).model, self._sets)
        report = {name: {"before": self._before[name], "after": after[name]} for name in self._before}
        (run.output_dir / "continuation_report.json").write_text(json.dumps(report, indent=2))
        for name, r in report.items():
            log.info("held-out %s: count NLL %.4f -> %.4f, gene CE %.4f -> %.4f", name, r["before"]["count"],
                     r["after"]["count"], r["before"].get("gene_id", float("nan")),
                     r["after"].get("gene_id", float("nan")))


@OBJECTIVES.register("finetune")
class Finetune(Pretrain):
    starts_from_checkpoint = True
    needs_task = True

    def module(self, model):
        from tfx.model.lora import add_lora
        from tfx.train.module import TaskModule, freeze_backbone

        f = self.finetune
        backbone_size = sum(p.numel() for p in model.parameters())
        if f.adapter == "lora":
            add_lora(model, dataclasses.asdict(f.lora))
        freeze_backbone(model, f.backbone, f.trainable_layers)
        module = TaskModule(model, self.task.module, self.optim, self.total_steps)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info("fine-tuning %d parameters (%.3f%% of the backbone's %d): backbone %s, adapter %s", trainable,
                 100 * trainable / backbone_size, backbone_size, f.backbone, f.adapter)
        return module


def held_out(model, val_sets: dict, max_batches: int = 8) -> dict[str, dict[str, float]]:
    """Mean held-out losses per validation set (species): count NLL and next-gene cross-entropy."""
    import torch

    model = model.eval()
    device = next(model.parameters()).device
    result = {}
    with torch.no_grad():
        for name, source in val_sets.items():
            sums, n = {}, 0
            for _, batch in zip(range(max_batches), source):
                batch = batch.to(device)
                for k, v in model.losses(model(batch), batch).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            result[name] = {k: v / max(n, 1) for k, v in sums.items()}
    model.train()
    return result
