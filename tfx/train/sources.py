"""Training and validation data for a recipe's `data` section, and the fine-tuning task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from tfx.checkpoint import Checkpoint
from tfx.data.anndata import CellReader, InputError
from tfx.infer import aux_token_ids
from tfx.registry import TASKS
from tfx.tokenize import Tokenizer
from tfx.train.data import CellBatches


def _tokenizer(cfg: DictConfig, ckpt: Checkpoint) -> Tokenizer:
    return Tokenizer(ckpt.model_cfg.seq_len, order=cfg.data.order, clip_counts=cfg.data.clip_counts,
                     normalize_to_scale=cfg.data.get("normalize_to_scale", 0))


def _read_h5ad(files, ckpt: Checkpoint, gene_col: str, label_key: str | None):
    cells, aux, labels = [], [], []
    for path in files:
        reader = CellReader(path, ckpt.vocab.lookup, gene_col=gene_col)
        if label_key and label_key not in reader.obs.columns:
            raise InputError(f"{path}: obs has no column '{label_key}'; set task.label_key to an obs column")
        for start, chunk in reader.iter_chunks():
            obs = reader.obs.iloc[start : start + len(chunk)]
            keep = [i for i, (ids, _) in enumerate(chunk) if len(ids)]  # a cell without genes teaches nothing
            cells += [chunk[i] for i in keep]
            a = aux_token_ids(ckpt, obs, str(path))
            if a is not None:
                aux.append(a[keep])
            if label_key:
                labels += list(obs[label_key].to_numpy()[keep])
        reader.close()
    return cells, (np.concatenate(aux) if aux else None), (np.array(labels) if label_key else None)


def build_task(cfg: DictConfig, ckpt: Checkpoint):
    """The fine-tuning task (its classes from the training files' label column), or None."""
    if cfg.objective != "finetune":
        return None
    from tfx.train.run import RecipeError

    if cfg.data.source != "h5ad":
        raise RecipeError("fine-tuning reads its labels from h5ad files: use data=h5ad data.files=[...]")
    classes = None
    if cfg.task.name == "classification":
        labels = set()
        for path in cfg.data.files:
            reader = CellReader(path, ckpt.vocab.lookup, gene_col=cfg.data.get("gene_col", "ensembl_id"))
            if cfg.task.label_key not in reader.obs.columns:
                raise InputError(f"{path}: obs has no column '{cfg.task.label_key}'; set task.label_key")
            labels |= set(reader.obs[cfg.task.label_key].astype(str))
            reader.close()
        classes = sorted(labels)
    return TASKS.get(cfg.task.name)(ckpt.model_cfg.embed_dim, classes)


def build_sources(cfg: DictConfig, ckpt: Checkpoint, rank: int = 0, world: int = 1, task=None):
    """(train source, {name: validation source}) for one rank of ``world``."""
    from tfx.train.run import RecipeError

    if cfg.data.source == "shards":
        from tfx.train.shard_sources import build_shard_sources

        return build_shard_sources(cfg, ckpt, _tokenizer(cfg, ckpt), rank, world)
    if cfg.data.source != "h5ad":
        raise RecipeError(f"data.source '{cfg.data.source}' is not one of shards, h5ad")
    gene_col = cfg.data.get("gene_col", "ensembl_id")
    label_key = cfg.task.label_key if task is not None else None
    classes = getattr(task, "classes", None)
    cells, aux, labels = _read_h5ad(cfg.data.files, ckpt, gene_col, label_key)
    vals = {Path(f).stem: _read_h5ad([f], ckpt, gene_col, label_key) for f in cfg.data.get("val_files") or []}
    if task is not None:
        labels = _encode(labels, classes)
        vals = {name: (c, a, _encode(lab, classes)) for name, (c, a, lab) in vals.items()}

    def source(cells, aux, labels, seed):
        return CellBatches(cells, aux, ckpt.vocab.pad, _tokenizer(cfg, ckpt), labels=labels,
                           token_budget=int(cfg.data.token_budget), max_cells=int(cfg.data.max_cells), seed=seed,
                           rank=rank, world_size=world,
                           pack_row_len=pack_row_len(cfg, ckpt, 0 if aux is None else aux.shape[1]))

    train = source(cells, aux, labels, int(cfg.seed))
    return train, {name: source(*val, int(cfg.seed) + 1) for name, val in vals.items()}


def pack_row_len(cfg: DictConfig, ckpt: Checkpoint, n_aux: int) -> int | None:
    """With data.pack: data.pack_row_len, by default the most positions a cell can take."""
    if not cfg.data.get("pack"):
        return None
    return int(cfg.data.get("pack_row_len") or ckpt.model_cfg.seq_len + n_aux)


def _encode(labels, classes):
    if labels is None or classes is None:
        return None if labels is None else labels.astype(np.float32)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels.astype(str)) - set(index))
    if unknown:
        raise InputError(f"validation labels not seen in training: {unknown[:5]}")
    return np.array([index[c] for c in labels.astype(str)], dtype=np.int64)
