"""Load and save checkpoint directories in the official layout."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tfx.checkpoint.finetuned import (ADAPTER_JSON, ADAPTER_WEIGHTS, TASK_JSON, TASK_WEIGHTS, Task, adapter_base,
                                      read_task, write_task)
from tfx.checkpoint.weights import load_weights
from tfx.errors import CheckpointError
from tfx.atomic import atomic_path, save_tensors
from tfx.outputs import DirOutput, check_output
from tfx.model.config import ConfigError, DataConfig, ModelConfig, config_dict, parse_config
from tfx.model.lora import merge_adapters
from tfx.model.transcriptformer import SpecialIds, TranscriptFormer
from tfx.vocab import GeneVocab, read_aux_vocab, write_aux_vocab, write_gene_embeddings

TABLE_KEY = "gene_embeddings.embedding.weight"


@dataclass
class Checkpoint:
    model: TranscriptFormer
    vocab: GeneVocab
    aux_vocabs: dict[str, dict[str, int]]
    model_cfg: ModelConfig
    data_cfg: DataConfig
    path: Path | None = None
    task: Task | None = None  # a fine-tuned checkpoint's task head


# every file tfx writes into a checkpoint directory: nothing else there is ever replaced
LAYOUT = DirOutput(("config.json", "model_weights.pt", "vocabs/*_gene.h5", "vocabs/*_vocab.json", TASK_JSON,
                    TASK_WEIGHTS, ADAPTER_JSON, ADAPTER_WEIGHTS), "checkpoint")


def check_output_dir(path: str | os.PathLike, overwrite: bool, option: str = "--output",
                     inputs: Sequence[str | os.PathLike] = ()) -> None:
    """The output policy (``tfx.outputs``) for a checkpoint directory: absent or empty, or with
    ``overwrite`` holding only what tfx writes into a checkpoint."""
    check_output(path, LAYOUT, overwrite=overwrite, inputs=inputs, option=option)


def load_checkpoint(path: str | os.PathLike, attention: str | None = None) -> Checkpoint:
    """Load an official release or a tfx export; ``attention`` overrides the backend by name."""
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json, model_weights.pt, vocabs/)")
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path}: missing; is {path} a TranscriptFormer checkpoint directory?")
    try:
        raw = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: holds a JSON {type(raw).__name__}, not the config object of a checkpoint")
    try:
        model_cfg, data_cfg = parse_config(raw, str(config_path))
    except (ConfigError, TypeError, AttributeError) as err:
        msg = str(err)
        raise CheckpointError(msg if msg.startswith(str(config_path)) else f"{config_path}: {msg}") from None
    if attention:
        model_cfg.attention = attention
    adapter = adapter_base(path) if not (path / "model_weights.pt").exists() else None
    weights = adapter[0] if adapter else load_weights(path / "model_weights.pt")

    vocab_files = [path / "vocabs" / name for name in data_cfg.esm2_mappings]
    for f in vocab_files:
        if not f.exists():
            raise CheckpointError(f"{f}: listed in config.json data_config.esm2_mappings but missing")
    # The frozen table is in the weights: read only the gene ids from the h5 files.
    vocab, table = GeneVocab.from_files(data_cfg.special_tokens, vocab_files, arrays=TABLE_KEY not in weights)
    if table is None:
        table = weights[TABLE_KEY]
    if table.shape[0] != len(vocab):
        raise CheckpointError(
            f"{path}: model_weights.pt has {table.shape[0]} gene rows but vocabs/ defines {len(vocab)} tokens; "
            "the vocabulary files do not belong to these weights"
        )
    aux_vocabs = read_aux_vocab(path / "vocabs", data_cfg.aux_cols) if data_cfg.aux_cols else {}
    model = build_model(model_cfg, data_cfg, vocab, torch.as_tensor(table), aux_vocabs)
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{path / 'model_weights.pt'}: weights do not fit config.json ({err})") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path / 'model_weights.pt'}: weights do not fit config.json "
            f"(missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}); "
            "the checkpoint is from another model"
        )
    if adapter:
        model = merge_adapters(model, adapter[2], adapter[1])
    model.eval()
    return Checkpoint(model, vocab, aux_vocabs, model_cfg, data_cfg, path, read_task(path, model_cfg.embed_dim))


def build_model(model_cfg, data_cfg, vocab: GeneVocab, table: torch.Tensor, aux_vocabs, attention=None):
    return TranscriptFormer(
        model_cfg,
        table,
        SpecialIds(pad=vocab.pad, start=vocab.start, end=vocab.end),
        aux_vocabs=aux_vocabs or None,
        max_counts=data_cfg.clip_counts,
        attention=attention,
    )


def save_checkpoint(ckpt: Checkpoint, out_dir: str | os.PathLike) -> Path:
    """Write ``ckpt`` in the official layout, atomically (the reference loads it as it is)."""
    out_dir = Path(out_dir)
    table = ckpt.model.gene_embeddings.embedding.weight.detach().cpu().numpy()
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    with atomic_path(out_dir) as tmp:
        (tmp / "vocabs").mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config_dict(ckpt.model_cfg, ckpt.data_cfg), indent=2))
        save_tensors(state, tmp / "model_weights.pt")
        for file_name, genes in ckpt.vocab.files:
            rows = np.array([ckpt.vocab.index[g] for g in genes], dtype=np.int64)
            write_gene_embeddings(tmp / "vocabs" / file_name, genes, table[rows])
        for col, vocab in ckpt.aux_vocabs.items():
            write_aux_vocab(tmp / "vocabs", col, vocab)
        if ckpt.task is not None:
            write_task(ckpt.task, tmp)
    return out_dir
