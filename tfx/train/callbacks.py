"""Training callbacks: throughput, MFU and gradient norm."""

from __future__ import annotations

import time

import lightning as L
import torch

from tfx.train.module import model_flops_per_token

# Dense bf16 peak per device, for the MFU estimate (override with trainer.peak_tflops).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def device_peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None  # unknown (CPU): MFU is not logged


class Throughput(L.Callback):
    """tokens/s, cells/s, step time, gradient norm and MFU, per device."""

    def __init__(self, peak_tflops: float | None = None):
        self.peak = device_peak_flops(peak_tflops)
        self._start = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            module.log("train/grad_norm", norm, batch_size=1)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        tokens = batch[0] if isinstance(batch, (tuple, list)) else batch
        n_tokens = int((tokens.gene_ids != module.model.special.pad).sum()) + tokens.gene_ids.shape[0]
        n_cells = tokens.n_cells
        metrics = {"perf/step_s": seconds, "perf/tokens_per_s": n_tokens / seconds,
                   "perf/cells_per_s": n_cells / seconds}
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None and hasattr(engine, "get_global_grad_norm"):
            norm = engine.get_global_grad_norm()
            if norm is not None:
                metrics["train/grad_norm"] = float(norm)
        if self.peak:
            context = tokens.gene_ids.shape[1]
            metrics["perf/mfu"] = n_tokens * model_flops_per_token(module.model, context) / seconds / self.peak
        module.log_dict(metrics, batch_size=1)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        if lr is not None:
            module.log("train/lr", lr, batch_size=1)
