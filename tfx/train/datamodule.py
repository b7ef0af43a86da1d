"""The recipe's data as a LightningDataModule, built once the processes exist.

Sources need this process's rank and world size, which are known only after the strategy has
set up the processes (Lightning's launcher starts them inside ``fit``). The data position is
part of every checkpoint: shard loaders record the shards they consumed; in-memory batches are
counted by completed optimizer steps (the trainer fetches one batch ahead).
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, IterableDataset



def _loader(source):
    """In-memory batches go through a DataLoader; a ShardLoader runs its own workers."""
    if isinstance(source, IterableDataset):
        return DataLoader(source, batch_size=None, num_workers=0)
    return source


class RecipeData(L.LightningDataModule):
    """``sources(rank, world)`` -> (train source, {name: validation source}), from the builder."""

    def __init__(self, sources):
        super().__init__()
        self.sources = sources
        self.train_source, self.val_sets, self._position = None, {}, None

    def setup(self, stage: str) -> None:
        if self.train_source is None:
            self.train_source, self.val_sets = self.sources(self.trainer.global_rank, self.trainer.world_size)
        if self._position is not None:
            self.train_source.load_state_dict(self._position)

    def train_dataloader(self):
        return _loader(self.train_source)

    def val_dataloader(self):
        return [_loader(v) for v in self.val_sets.values()]

    def state_dict(self) -> dict:
        if hasattr(self.train_source, "state_dict"):
            return {"source": self.train_source.state_dict()}
        return {"source": {"batches": self.trainer.global_step * self.trainer.accumulate_grad_batches}}

    def load_state_dict(self, state: dict) -> None:
        self._position = state["source"]
        if self.train_source is not None:
            self.train_source.load_state_dict(self._position)
