"""The recipe's data: the training and held-out sources (shards or h5ad files) and the classes of
a fine-tuning task's label column. Sources are built per process, once its rank is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import ListConfig

from tfx.checkpoint import Checkpoint
from tfx.data import preprocess
from tfx.data.anndata import CellReader
from tfx.data.loader import ShardLoader, resolve_urls
from tfx.data.memory import CellBatches, read_cells
from tfx.data.shards import label_values
from tfx.errors import InputError, RecipeError
from tfx.recipe.schema import Recipe, TaskSchema
from tfx.tokenize.batches import BatchPlanner


def _shard_specs(spec, what: str, src: str) -> dict[str, str | list[str]]:
    """{source name: shard spec}; a directory or file is named by its last path part."""
    if spec is None:
        return {}
    specs = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not all(isinstance(s, str) for s in specs):
        raise RecipeError(f"{src}: {what} must be a path or URL, or a list of them")
    names = [Path(s.rstrip("/")).name or f"source{i}" for i, s in enumerate(specs)]
    if len(set(names)) < len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return dict(zip(names, specs))


def task_classes(t: TaskSchema, task_cls, r: Recipe, ckpt: Checkpoint, src: str) -> list[str] | None:
    """A categorical task's classes, read from the training data's label column (None: a numeric task)."""
    classes = None
    if getattr(task_cls, "categorical", True):
        if r.data.source == "shards":
            urls = [u for spec in _shard_specs(r.data.shards, "data.shards", src).values() for u in resolve_urls(spec)]
            classes = sorted(label_values(urls, t.label_key))
        else:
            labels = set()
            for path in r.data.files:
                reader = CellReader(path, ckpt.vocab.lookup, gene_col=r.data.gene_col)
                if t.label_key not in reader.obs.columns:
                    raise InputError(f"{path}: obs has no column '{t.label_key}'; set task.label_key to an obs column")
                labels |= set(reader.obs[t.label_key].astype(str))
                reader.close()
            classes = sorted(labels)
        if len(classes) < 2:
            raise InputError(f"{src}: the training data has {len(classes)} value(s) of '{t.label_key}'; "
                             "classification needs at least 2")
    return classes


def _encode(labels, classes, where: str):
    if labels is None:
        return None
    if classes is None:
        return labels.astype(np.float32)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels.astype(str)) - set(index))
    if unknown:
        raise InputError(f"{where}: labels not seen in training: {unknown[:5]}")
    return np.array([index[c] for c in labels.astype(str)], dtype=np.int64)


def sources(r: Recipe, ckpt: Checkpoint, src: str):
    """(rank, world) -> (train source, {name: held-out source}), called once the processes exist."""
    d = r.data
    seq_len, n_aux = ckpt.model_cfg.seq_len, len(ckpt.aux_vocabs)
    pack_row_len = (d.pack_row_len or seq_len + n_aux) if d.pack else None
    label_key = ckpt.task.label_key if ckpt.task else None
    classes = ckpt.task.module.classes if ckpt.task else None
    tokenizer = preprocess.tokenizer(ckpt.data_cfg, seq_len)
    BatchPlanner(seq_len, n_aux, d.token_budget, d.max_cells, pack_row_len)  # the batch knobs checked before compute
    if d.source == "shards":
        train_specs = _shard_specs(d.shards, "data.shards", src)
        if not train_specs:
            raise RecipeError(f"{src}: data.shards names no shards; set data.shards=DIR (tfx shard output)")
        weights = list(d.weights) if d.weights else [1.0] * len(train_specs)
        if len(weights) != len(train_specs):
            raise RecipeError(f"{src}: data.weights has {len(weights)} entries for {len(train_specs)} data.shards sources")
        val_specs = _shard_specs(d.val_shards, "data.val_shards", src)
        for spec in (*train_specs.values(), *val_specs.values()):
            resolve_urls(spec)  # a missing path or a refused manifest stops the run before compute

        def sources(rank: int, world: int):
            def loader(spec: dict, seed: int) -> ShardLoader:
                return ShardLoader(spec, ckpt.vocab, tokenizer, aux_vocabs=ckpt.aux_vocabs,
                                   token_budget=d.token_budget, max_cells=d.max_cells, shuffle_buffer=d.shuffle_buffer,
                                   seed=seed, rank=rank, world_size=world, num_workers=d.num_workers,
                                   on_corrupt=d.on_corrupt.value, max_corrupt_share=d.max_corrupt_share,
                                   pack_row_len=pack_row_len, label_key=label_key,
                                   classes=classes)

            train = loader({n: {"urls": u, "weight": w} for (n, u), w in zip(train_specs.items(), weights)}, r.seed)
            return train, {n: loader({n: {"urls": u}}, r.seed + 1) for n, u in val_specs.items()}

        return sources
    if not d.files:
        raise RecipeError(f"{src}: data.files lists no h5ad file; set data.files=[cells.h5ad]")

    def read(files):
        cells, aux, labels = read_cells(files, ckpt.vocab.lookup, ckpt.aux_vocabs, d.gene_col, label_key)
        return cells, aux, _encode(labels, classes, ", ".join(map(str, files)))

    def sources(rank: int, world: int):
        def batches(cells, aux, labels, seed):
            return CellBatches(cells, aux, ckpt.vocab.pad, tokenizer, labels=labels, token_budget=d.token_budget,
                               max_cells=d.max_cells, seed=seed, rank=rank, world_size=world,
                               pack_row_len=pack_row_len)

        train = batches(*read(d.files), r.seed)
        return train, {Path(f).stem: batches(*read([f]), r.seed + 1) for f in d.val_files}

    return sources
