"""The recipe's data: the training and held-out sources (shards or h5ad files) and the classes of
a fine-tuning task's label column. Sources are built per process, once its rank is known."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import ListConfig

from tfx.checkpoint import Checkpoint
from tfx.data import preprocess
from tfx.data.anndata import CellReader
from tfx.data.labels import LabelCodec, discover_classes, refuse_missing
from tfx.data.loader import ShardLoader, manifest_classes, manifest_missing, resolve_urls
from tfx.data.memory import CellBatches, read_cells
from tfx.errors import RecipeError
from tfx.recipe.schema import DataSource, MissingLabels, Recipe, TaskSchema
from tfx.tokenize.batches import BatchPlanner, BatchSpec

log = logging.getLogger(__name__)


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
    """A categorical task's classes: the recipe's ``task.classes``, else those ``tfx shard`` recorded
    in the manifest, else the h5ad files' label column (None: a numeric task)."""
    if not getattr(task_cls, "categorical", True):
        return None
    if t.classes:
        values = list(t.classes)
    elif r.data.source == DataSource.shards:
        values = manifest_classes(list(_shard_specs(r.data.shards, "data.shards", src).values()), t.label_key)
    else:
        values = []
        for path in _h5ad_files(r.data, src):
            reader = CellReader(path, ckpt.vocab.lookup, gene_col=r.data.gene_col, labels=LabelCodec(t.label_key))
            values += list(reader.read_obs([t.label_key])[t.label_key])
            reader.close()
    return discover_classes(values, t.label_key, src, t.missing_labels == MissingLabels.drop)


def _h5ad_files(d, src: str) -> list[str]:
    if not d.files:
        raise RecipeError(f"{src}: data.files lists no h5ad file; set data.files=[cells.h5ad]")
    return d.files


def _check_missing_labels(spec, labels: LabelCodec) -> None:
    """Cells of a shard source without a label, as its manifest counts them: refused before compute,
    or (``task.missing_labels=drop``) one warning; the loader leaves them out as they come."""
    n = manifest_missing(spec, labels.key)
    if not labels.drop_missing:
        refuse_missing(labels.key, n or 0, str(spec))  # uncounted (older shards): the loader refuses the first
    elif n:
        log.warning("%s: dropping %d cells that have no value in obs '%s' (task.missing_labels=drop)",
                    spec, n, labels.key)
    elif n is None:
        log.warning("%s: no manifest counts the cells without obs '%s' (shards written by an older tfx); "
                    "those met are dropped (task.missing_labels=drop)", spec, labels.key)


def sources(r: Recipe, ckpt: Checkpoint, src: str):
    """(rank, world) -> (train source, {name: held-out source}), called once the processes exist."""
    d = r.data
    seq_len, n_aux = ckpt.model_cfg.seq_len, len(ckpt.aux_vocabs)
    spec = BatchSpec(d.token_budget, d.max_cells, (d.pack_row_len or seq_len + n_aux) if d.pack else 0)
    BatchPlanner(seq_len, n_aux, spec)  # the batch knobs checked before compute
    labels = None
    if ckpt.task:
        labels = LabelCodec(ckpt.task.label_key, ckpt.task.module.classes,
                            drop_missing=r.task.missing_labels == MissingLabels.drop)
    prep = preprocess.preprocessing(ckpt)
    if d.source == DataSource.shards:
        train_specs = _shard_specs(d.shards, "data.shards", src)
        if not train_specs:
            raise RecipeError(f"{src}: data.shards names no shards; set data.shards=DIR (tfx shard output)")
        weights = list(d.weights) if d.weights else [1.0] * len(train_specs)
        if len(weights) != len(train_specs):
            raise RecipeError(f"{src}: data.weights has {len(weights)} entries for {len(train_specs)} data.shards sources")
        val_specs = _shard_specs(d.val_shards, "data.val_shards", src)
        for s in (*train_specs.values(), *val_specs.values()):
            resolve_urls(s)  # a missing path or a refused manifest stops the run before compute
            if labels is not None:
                _check_missing_labels(s, labels)

        def sources(rank: int, world: int):
            def loader(sources: dict, seed: int) -> ShardLoader:
                return ShardLoader(sources, ckpt.vocab, prep, spec, aux_vocabs=ckpt.aux_vocabs, labels=labels,
                                   shuffle_buffer=d.shuffle_buffer, seed=seed, rank=rank, world_size=world,
                                   num_workers=d.num_workers, on_corrupt=d.on_corrupt.value,
                                   max_corrupt_share=d.max_corrupt_share)

            train = loader({n: {"urls": u, "weight": w} for (n, u), w in zip(train_specs.items(), weights)}, r.seed)
            return train, {n: loader({n: {"urls": u}}, r.seed + 1) for n, u in val_specs.items()}

        return sources
    _h5ad_files(d, src)

    def sources(rank: int, world: int):
        def batches(files, seed):
            cells, aux, encoded = read_cells(files, ckpt.vocab.lookup, ckpt.aux_vocabs, d.gene_col, labels)
            return CellBatches(cells, aux, ckpt.vocab.pad, prep, spec, labels=encoded, seed=seed, rank=rank,
                               world_size=world)

        train = batches(d.files, r.seed)
        return train, {Path(f).stem: batches([f], r.seed + 1) for f in d.val_files}

    return sources
