"""DeepSpeed ZeRO on CPU as well as CUDA.

Lightning's DeepSpeedStrategy refuses non-CUDA accelerators, while DeepSpeed itself trains on
CPU (DS_ACCELERATOR=cpu, gloo). ``CPUCapableDeepSpeedStrategy`` lifts that one refusal: on CPU
it sets up the environment and the process group as DDP does (without the check that device
indices equal local ranks), and gives each process a CPU device indexed by its local rank
(DeepSpeed reads the index as its device rank), and all-reduces through gloo rather than
DeepSpeed's shared-memory op, which DeepSpeed would compile with the machine's C++ compiler on
first use (minutes, and a compiler the user may not have). On CUDA it is Lightning's strategy as is.
"""

from __future__ import annotations

import os

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies.ddp import DDPStrategy as _DDP


class CPUCapableDeepSpeedStrategy(DeepSpeedStrategy):
    def _on_cpu(self) -> bool:
        return self.parallel_devices is not None and self.parallel_devices[0].type == "cpu"

    def setup_environment(self) -> None:
        if self._on_cpu():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # read when its comm backend starts
            _DDP.setup_environment(self)  # skips only DeepSpeedStrategy's CUDA check
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        # as DeepSpeedStrategy, less its check that device indices equal local ranks (CPUs have none)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        if self._on_cpu():
            return torch.device("cpu", self.local_rank)
        return super().root_device
