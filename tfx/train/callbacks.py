"""Training callbacks: Lightning's ThroughputMonitor (cells, tokens, FLOP/s and MFU) and the
gradient norm, each metric under one key; stopping at a step boundary on SIGTERM or SIGINT, and at
once on a non-finite loss; progress by steps, as a bar on a terminal and log lines elsewhere."""

from __future__ import annotations

import datetime
import logging
import math
import signal
import threading
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor, TQDMProgressBar

from tfx.errors import Interrupted, RecipeError
from tfx.progress import LOG_EVERY_S
from tfx.train.module import n_tokens

log = logging.getLogger("tfx.progress")


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
        if self.received is not None:  # not KeyboardInterrupt: Lightning would end the process with exit code 1
            self._restore()
            raise Interrupted(f"{signal.Signals(signum).name} received twice: stopped at once; run the same command "
                              "again to resume from the last checkpoint", 128 + signum)
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


class StopOnNonFiniteLoss(L.Callback):
    """A NaN or infinite training loss ends the run with one line, before a checkpoint of it is saved
    (Lightning runs checkpoint callbacks last): the last good checkpoint stays the last one."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise RecipeError(f"step {trainer.global_step}: the training loss is {float(loss)}; the run stopped and "
                              f"its last good checkpoint is kept in {trainer.default_root_dir}/checkpoints (lower "
                              "optim.lr, or check the data and labels)")


class StepBar(TQDMProgressBar):
    """Lightning's bar, counting the run's steps (a stream has no epochs to count: no 'Epoch 0/-2')."""

    def on_train_epoch_start(self, trainer, *_):
        super().on_train_epoch_start(trainer, *_)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.update(trainer.global_step)
        self.train_progress_bar.set_description("train")


class LogProgress(L.Callback):
    """Where stderr is no terminal (a log, a batch job): a line every LOG_EVERY_S seconds with the
    step, the loss, tokens/s and the time left."""

    def __init__(self):
        self._last = self._start = 0.0
        self._tokens = 0
        self._first_step = 0

    def on_train_start(self, trainer, pl_module):
        self._last = self._start = time.monotonic()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tokens += n_tokens(pl_module.model, batch)
        now = time.monotonic()
        if now - self._last < LOG_EVERY_S and trainer.global_step < trainer.max_steps:
            return
        self._last = now
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        done = trainer.global_step - self._first_step
        left = (now - self._start) / max(done, 1) * (trainer.max_steps - trainer.global_step)
        log.info("train: step %d/%d, loss %.4f, %.0f tokens/s, %s left", trainer.global_step, trainer.max_steps,
                 float(loss), self._tokens / max(now - self._start, 1e-9), datetime.timedelta(seconds=round(left)))
