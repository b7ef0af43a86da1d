"""Distributed strategies by registry name: auto, ddp, and DeepSpeed ZeRO stages 1-3 (stage 3
optionally offloaded). Each entry takes the accelerator and returns what Lightning's Trainer takes;
Lightning and DeepSpeed are imported only when one is built."""

from __future__ import annotations

import os

from tfx.registry import STRATEGIES


@STRATEGIES.register("auto")
def auto(accelerator: str):
    return "auto"


@STRATEGIES.register("ddp")
def ddp(accelerator: str):
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend="gloo" if accelerator == "cpu" else None)


def _deepspeed(stage: int, offload: bool = False):
    def strategy(accelerator: str):
        from tfx.train.deepspeed_cpu import CPUCapableDeepSpeedStrategy

        cpu = accelerator == "cpu"
        if cpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return CPUCapableDeepSpeedStrategy(
            stage=stage, offload_optimizer=offload, offload_parameters=offload and stage == 3,
            process_group_backend="gloo" if cpu else None,
            logging_batch_size_per_gpu=1,  # batches are token-budgeted; DeepSpeed uses this for its logs only
        )

    strategy.__doc__ = f"DeepSpeed ZeRO stage {stage}{' with optimizer and parameter offload' if offload else ''}"
    return strategy


for _stage in (1, 2, 3):
    STRATEGIES.register(f"deepspeed_zero{_stage}", _deepspeed(_stage))
STRATEGIES.register("deepspeed_zero3_offload", _deepspeed(3, offload=True))
