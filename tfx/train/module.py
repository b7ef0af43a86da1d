"""LightningModules: pretraining / continuation (next gene + counts) and task fine-tuning."""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from tfx.model.transcriptformer import TokenBatch, TranscriptFormer
from tfx.registry import TASKS


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    total_steps: int = 0  # 0: the run's max_steps
    min_lr_ratio: float = 0.1


def warmup_cosine(step: int, cfg: OptimConfig) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(module: nn.Module, cfg: OptimConfig):
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def model_flops_per_token(model: TranscriptFormer, context: float) -> float:
    """Training FLOPs per token: 3 x forward, forward = 2 x matmul weights + causal attention."""
    cfg = model.cfg
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = cfg.num_layers * 2 * context * cfg.embed_dim  # QK^T and AV, causal half of 2*2*L*E
    return 3 * (2 * matmul + 2 * attention)


class PretrainModule(L.LightningModule):
    """Next-gene cross-entropy + count NLL (weights from the model config)."""

    def __init__(self, model: TranscriptFormer, optim: OptimConfig):
        super().__init__()
        self.model = model
        self.optim = optim

    def training_step(self, batch: TokenBatch, batch_idx: int):
        losses = self.model.losses(self.model(batch), batch)
        self._log_losses("train", losses, batch)
        return losses["loss"]

    def validation_step(self, batch: TokenBatch, batch_idx: int, dataloader_idx: int = 0):
        losses = self.model.losses(self.model(batch), batch)
        self._log_losses("val", losses, batch)

    def _log_losses(self, stage: str, losses: dict, batch: TokenBatch):
        n = int((batch.gene_ids != self.model.special.pad).sum())
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, batch_size=max(n, 1), sync_dist=stage == "val",
                     prog_bar=name == "loss")

    def configure_optimizers(self):
        return adamw(self.model, self.optim)


# --- task fine-tuning ---------------------------------------------------------------------

class ClassificationTask(nn.Module):
    """Cell-type (or any categorical obs column) classification from the cell embedding."""

    def __init__(self, embed_dim: int, classes: list[str]):
        super().__init__()
        self.classes = list(classes)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU(),
                                  nn.Linear(embed_dim, len(self.classes)))

    def loss(self, pred, target):
        return nn.functional.cross_entropy(pred, target)

    def metrics(self, pred, target) -> dict:
        return {"accuracy": (pred.argmax(-1) == target).float().mean()}


class RegressionTask(nn.Module):
    """Regression of a numeric obs column from the cell embedding."""

    def __init__(self, embed_dim: int, classes=None):
        super().__init__()
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU(),
                                  nn.Linear(embed_dim, 1))

    def loss(self, pred, target):
        return nn.functional.mse_loss(pred.squeeze(-1), target.float())

    def metrics(self, pred, target) -> dict:
        return {"mae": (pred.squeeze(-1) - target.float()).abs().mean()}


TASKS.register("classification", ClassificationTask)
TASKS.register("regression", RegressionTask)


def freeze_backbone(model: TranscriptFormer, policy: str, trainable_layers: int = 2) -> None:
    """``frozen``: only the task head trains; ``partial``: also the last layers; ``full``: all."""
    if policy not in ("frozen", "partial", "full"):
        raise KeyError(f"unknown backbone policy '{policy}' (frozen, partial, full)")
    for name, p in model.named_parameters():
        if name == "gene_embeddings.embedding.weight":
            continue  # the protein table is always frozen
        p.requires_grad = policy == "full"
    if policy == "partial":
        for layer in model.transformer_encoder.encoder_layers[-trainable_layers:]:
            layer.requires_grad_(True)


class TaskModule(L.LightningModule):
    def __init__(self, model: TranscriptFormer, task: nn.Module, optim: OptimConfig):
        super().__init__()
        self.model = model
        self.task = task
        self.optim = optim

    def forward(self, batch: TokenBatch):
        out = self.model(batch, embed=True, heads=False)
        return self.task.head(self.model.cell_embeddings(out))

    def _step(self, stage: str, batch):
        tokens, target = batch
        pred = self(tokens)
        loss = self.task.loss(pred, target)
        self.log(f"{stage}/loss", loss, batch_size=len(target), prog_bar=True, sync_dist=stage == "val")
        for name, value in self.task.metrics(pred, target).items():
            self.log(f"{stage}/{name}", value, batch_size=len(target), sync_dist=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._step("val", batch)

    def configure_optimizers(self):
        return adamw(self, self.optim)
