"""Training callbacks: Lightning's ThroughputMonitor (cells, tokens, FLOP/s and MFU) and the
gradient norm, each metric under one key; stopping at a step boundary on SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from tfx.train.module import n_tokens


class Throughput(ThroughputMonitor):
    """Per device: ``train/device/samples_per_sec`` (cells), ``train/device/items_per_sec`` (tokens),
    ``train/device/flops_per_sec`` and, where the device's peak is known (Lightning's table for
    GPUs, or ``peak_tflops``), ``train/device/mfu``; over the last ``window`` steps (with several
    devices also the totals, without ``device/``). The module reports each batch's FLOPs."""

    def __init__(self, peak_tflops: float | None = None, window: int = 10):
        super().__init__(batch_size_fn=lambda b: b.n_cells, length_fn=self._length, window_size=window)
        self.peak_tflops = peak_tflops
        self._module = None

    def _length(self, batch) -> int:
        return n_tokens(self._module.model, batch)

    def setup(self, trainer, pl_module, stage):
        self._module = pl_module
        super().setup(trainer, pl_module, stage)
        if self.peak_tflops:
            self.available_flops = int(self.peak_tflops * 1e12)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops  # per device


class GradNorm(L.Callback):
    """``train/grad_norm``: the global L2 norm of the gradients before each optimizer step (under
    DeepSpeed, the engine's own, since each rank holds a partition)."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None:
            return  # DeepSpeed reduces and clips inside its step; read after it
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            module.log("train/grad_norm", norm, batch_size=1)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        norm = engine.get_global_grad_norm() if engine is not None else None
        if norm is not None:
            module.log("train/grad_norm", float(norm), batch_size=1)


class StopOnSignal(L.Callback):
    """SIGTERM (a SLURM preemption or time limit, ``scancel``) or SIGINT (Ctrl-C) stops training at
    the next step boundary, on every rank; ``received`` then holds the signal and the caller saves a
    resumable checkpoint. A second signal stops at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():  # replaces Lightning's own SIGTERM handler
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.received = self.received or signal.SIGTERM  # another rank's signal
            trainer.should_stop = True

    def teardown(self, trainer, pl_module, stage):
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
