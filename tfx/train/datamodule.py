"""The recipe's data as a LightningDataModule, built once the processes exist.

Sources need this process's rank and world size, which are known only after the strategy has
set up the processes (Lightning's launcher starts them inside ``fit``). The data position is
part of every checkpoint, counted in batches of completed optimizer steps (the trainer fetches one
batch ahead): in-memory batches are skipped, a shard loader replays its stream to that batch.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, IterableDataset



class _Stream:
    """A ShardLoader as Lightning sees it: without state methods, which Lightning would call to save
    the position counting the batch it fetched ahead (this module saves the position instead)."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        return iter(self.source)


def _loader(source):
    """In-memory batches go through a DataLoader; a ShardLoader runs its own workers."""
    if isinstance(source, IterableDataset):
        return DataLoader(source, batch_size=None, num_workers=0)
    return _Stream(source)


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
        trained = self.trainer.global_step * self.trainer.accumulate_grad_batches  # not those fetched ahead
        if hasattr(self.train_source, "state_dict"):
            return {"source": self.train_source.state_dict(batches=trained)}
        return {"source": {"batches": trained}}

    def load_state_dict(self, state: dict) -> None:
        self._position = state["source"]
        if self.train_source is not None:
            self.train_source.load_state_dict(self._position)
