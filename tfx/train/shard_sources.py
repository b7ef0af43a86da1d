"""Training data streamed from `tfx shard` output: one ShardLoader mixing the sources by weight."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from tfx.checkpoint import Checkpoint
from tfx.data.loader import ShardLoader
from tfx.tokenize import Tokenizer
from tfx.train.sources import pack_row_len


def _named(spec) -> dict[str, str]:
    """{source name: shard spec}; a directory or file is named by its last path part."""
    specs = list(spec) if isinstance(spec, (list, ListConfig)) else [spec]
    names = [Path(str(s).rstrip("/")).name or f"source{i}" for i, s in enumerate(specs)]
    if len(set(names)) < len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return dict(zip(names, map(str, specs)))


def build_shard_sources(cfg: DictConfig, ckpt: Checkpoint, tokenizer: Tokenizer, rank: int, world: int):
    from tfx.train.run import RecipeError

    d = cfg.data
    train_specs = _named(d.shards)
    weights = list(d.weights) if d.get("weights") else [1.0] * len(train_specs)
    if len(weights) != len(train_specs):
        raise RecipeError(f"data.weights has {len(weights)} entries for {len(train_specs)} data.shards sources")

    def loader(sources: dict, seed: int) -> ShardLoader:
        return ShardLoader(sources, ckpt.vocab, tokenizer, aux_vocabs=ckpt.aux_vocabs,
                           token_budget=int(d.token_budget), max_cells=int(d.max_cells),
                           shuffle_buffer=int(d.get("shuffle_buffer", 2000)), seed=seed, rank=rank, world_size=world,
                           num_workers=int(d.get("num_workers", 0)), on_corrupt=d.get("on_corrupt", "skip"),
                           pack_row_len=pack_row_len(cfg, ckpt, len(ckpt.aux_vocabs)))

    train = loader({n: {"urls": u, "weight": w} for (n, u), w in zip(train_specs.items(), weights)}, int(cfg.seed))
    vals = {n: loader({n: {"urls": u}}, int(cfg.seed) + 1) for n, u in _named(d.val_shards).items()} \
        if d.get("val_shards") else {}
    return train, vals
