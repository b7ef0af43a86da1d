"""LightningModules: next gene + counts (pretraining, continuation) and task fine-tuning."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from tfx.model.transcriptformer import TranscriptFormer
from tfx.tokenize import TokenBatch
from tfx.recipe.schema import OptimSchema


def warmup_cosine(step: int, cfg: OptimSchema, total_steps: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(module: nn.Module, cfg: OptimSchema, total_steps: int):
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def model_flops_per_token(model: TranscriptFormer, context: float) -> float:
    """Training FLOPs per token: 3 x forward, forward = 2 x matmul weights + causal attention."""
    cfg = model.cfg
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = cfg.num_layers * 2 * context * cfg.embed_dim  # QK^T and AV, causal half of 2*2*L*E
    return 3 * (2 * matmul + 2 * attention)


def n_tokens(model: TranscriptFormer, batch: TokenBatch) -> int:
    """Tokens a batch feeds the model: its gene positions and each cell's aux tokens."""
    return int((batch.gene_ids != model.special.pad).sum()) + batch.n_cells * len(model.aux_unknown)


class _Module(L.LightningModule):
    """What both objectives share: AdamW with warm-up and cosine decay, the LR and the FLOPs of
    each batch (read by Lightning's ThroughputMonitor for FLOP/s and MFU)."""

    def __init__(self, model: TranscriptFormer, optim: OptimSchema, total_steps: int):
        super().__init__()
        self.model, self.optim, self.total_steps = model, optim, total_steps
        self.flops_per_batch = 0.0

    def _count(self, batch) -> int:
        """Tokens of the batch (gene positions and aux tokens); sets this batch's FLOPs."""
        n = n_tokens(self.model, batch)
        self.flops_per_batch = n * model_flops_per_token(self.model, batch.gene_ids.shape[1])
        return n

    def on_train_batch_start(self, batch, batch_idx):
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    def configure_optimizers(self):
        return adamw(self, self.optim, self.total_steps)


class PretrainModule(_Module):
    """Next-gene cross-entropy + count NLL (weights from the model config)."""

    def training_step(self, batch: TokenBatch, batch_idx: int):
        losses = self.model.losses(self.model(batch), batch)
        self._log_losses("train", losses, self._count(batch))
        return losses["loss"]

    def validation_step(self, batch: TokenBatch, batch_idx: int, dataloader_idx: int = 0):
        losses = self.model.losses(self.model(batch), batch)
        self._log_losses("val", losses, int((batch.gene_ids != self.model.special.pad).sum()))

    def _log_losses(self, stage: str, losses: dict, n: int):
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, batch_size=max(n, 1), sync_dist=stage == "val",
                     prog_bar=name == "loss")


class TaskModule(_Module):
    def __init__(self, model: TranscriptFormer, task: nn.Module, optim: OptimSchema, total_steps: int):
        super().__init__(model, optim, total_steps)
        self.task = task

    def forward(self, batch: TokenBatch):
        out = self.model(batch, embed=True, heads=False)
        return self.task.head(self.model.cell_embeddings(out))

    def _step(self, stage: str, batch: TokenBatch):
        target = batch.labels
        pred = self(batch)
        loss = self.task.loss(pred, target)
        self.log(f"{stage}/loss", loss, batch_size=len(target), prog_bar=True, sync_dist=stage == "val")
        for name, value in self.task.metrics(pred, target).items():
            self.log(f"{stage}/{name}", value, batch_size=len(target), sync_dist=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        self._count(batch)
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._step("val", batch)
