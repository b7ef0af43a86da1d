"""Vocabulary surgery: serve or continue a checkpoint with other species' gene embeddings.

Special tokens keep their ids and rows. Every vocabulary-sized tensor is carried over by gene
id: the frozen table takes the new files' rows; the count head's per-gene bias, the gene-id
head's output rows (and a likelihood's per-gene parameters) keep their values for genes the
checkpoint knew and start from the mean over its genes otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import torch
from torch import nn

from tfx.checkpoint.io import Checkpoint, CheckpointError
from tfx.vocab import GeneVocab, read_gene_embeddings


def _remap_rows(old: torch.Tensor, old_vocab: GeneVocab, new_vocab: GeneVocab) -> torch.Tensor:
    """Rows of a [V, ...] tensor for ``new_vocab``: copied by token, the gene mean where unknown."""
    n_special = len(old_vocab.special_tokens)
    fill = old[n_special:].mean(dim=0) if len(old) > n_special else torch.zeros_like(old[0])
    new = fill.expand(len(new_vocab), *old.shape[1:]).clone()
    pairs = [(i, old_vocab.index[t]) for i, t in enumerate(new_vocab.tokens) if t in old_vocab.index]
    new_idx, old_idx = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs))
    new[new_idx] = old[old_idx]
    return new


def remap_vocabulary(ckpt: Checkpoint, new_vocab: GeneVocab, new_table: np.ndarray) -> Checkpoint:
    """A new Checkpoint whose model reads ``new_vocab`` (table rows ``new_table``)."""
    model = ckpt.model
    if new_table.shape[1] != model.gene_embeddings.embedding.embedding_dim:
        raise CheckpointError(
            f"gene embedding dimension {new_table.shape[1]} differs from the checkpoint's "
            f"{model.gene_embeddings.embedding.embedding_dim}; embed the proteins with the same ESM-2 model and layer"
        )
    old_vocab = ckpt.vocab
    model = _copy_without_table(model)
    with torch.no_grad():
        model.gene_embeddings.embedding = nn.Embedding.from_pretrained(torch.as_tensor(new_table).float(), freeze=True)
        for module, name in _vocab_sized(model):
            old = getattr(module, name)
            setattr(module, name, nn.Parameter(_remap_rows(old.data, old_vocab, new_vocab), requires_grad=old.requires_grad))
        if hasattr(model, "gene_id_head"):
            out = model.gene_id_head.layers[-1]
            out.out_features = len(new_vocab)
    data_cfg = dataclasses.replace(ckpt.data_cfg, esm2_mappings=[name for name, _ in new_vocab.files])
    return dataclasses.replace(ckpt, model=model, vocab=new_vocab, data_cfg=data_cfg)


def _copy_without_table(model):
    """A deep copy that leaves the frozen table (about to be replaced) out: it can be gigabytes."""
    table = model.gene_embeddings.embedding
    model.gene_embeddings.embedding = None
    try:
        return copy.deepcopy(model)
    finally:
        model.gene_embeddings.embedding = table


def _vocab_sized(model):
    """(module, parameter name) of every parameter with one row per vocabulary token."""
    yield model.mu.gene_embedding, "weight"
    if hasattr(model, "gene_id_head"):
        yield model.gene_id_head.layers[-1], "weight"
        yield model.gene_id_head.layers[-1], "bias"
    for module in model.likelihood.modules():
        if isinstance(module, nn.Embedding):
            yield module, "weight"


def with_species_embeddings(ckpt: Checkpoint, files: list[str | os.PathLike]) -> Checkpoint:
    """The reference's ``--pretrained-embedding``: the genes of ``files`` replace the vocabulary."""
    vocab, table = GeneVocab.from_files(ckpt.data_cfg.special_tokens, files)
    dim = ckpt.model.gene_embeddings.embedding.weight.shape[1]
    if table.shape[1] != dim:
        raise CheckpointError(f"{', '.join(map(str, files))}: embeddings of dimension {table.shape[1]}, the checkpoint's "
                              f"are {dim}; embed the proteins with the checkpoint's ESM-2 model and layer")
    n_special = len(vocab.special_tokens)
    table[:n_special] = ckpt.model.gene_embeddings.embedding.weight[:n_special].detach().cpu().numpy()
    return remap_vocabulary(ckpt, vocab, table)


def add_species(ckpt: Checkpoint, files: list[str | os.PathLike]) -> Checkpoint:
    """Append the genes of ``files`` to the vocabulary; existing ids and rows are unchanged."""
    tokens, added_files, rows = list(ckpt.vocab.tokens), list(ckpt.vocab.files), []
    known = set(tokens)
    for path in files:
        name = os.path.basename(path)
        if name in {f for f, _ in ckpt.vocab.files}:
            raise CheckpointError(f"{path}: the checkpoint already has vocabs/{name}; rename the file or drop it")
        genes, table = read_gene_embeddings(path)
        if len(set(genes)) != len(genes):
            raise CheckpointError(f"{path}: lists a gene twice; one embedding per gene id")
        present = [g for g in genes if g in known]
        if present:
            raise CheckpointError(
                f"{path}: {len(present)} genes are already in the vocabulary (e.g. {present[0]}); "
                "a new species must bring new gene ids"
            )
        tokens += genes
        known.update(genes)
        added_files.append((name, genes))
        rows.append(table)
    old_table = ckpt.model.gene_embeddings.embedding.weight.detach().cpu().numpy()
    if any(r.shape[1] != old_table.shape[1] for r in rows):
        bad = next(p for p, r in zip(files, rows) if r.shape[1] != old_table.shape[1])
        raise CheckpointError(
            f"{bad}: embedding dimension differs from the checkpoint's {old_table.shape[1]}; "
            "embed the proteins with the same ESM-2 model and layer"
        )
    vocab = GeneVocab(tokens, ckpt.vocab.special_tokens, added_files)
    return remap_vocabulary(ckpt, vocab, np.concatenate([old_table, *rows]))


def add_aux_values(ckpt: Checkpoint, column: str, values: list[str]) -> Checkpoint:
    """Aux values (e.g. assays) the checkpoint's ``column`` vocabulary lacks get new ids; their
    embedding rows start from the 'unknown' row. Values it already has are left as they are."""
    if column not in ckpt.aux_vocabs:
        raise CheckpointError(f"{ckpt.path or 'the checkpoint'}: has no '{column}' vocabulary (aux columns: "
                              f"{', '.join(ckpt.aux_vocabs) or 'none'}); drop vocab.add_assays")
    vocab = dict(ckpt.aux_vocabs[column])
    new = [str(v) for v in dict.fromkeys(values) if str(v) not in vocab]
    if not new:
        return ckpt
    old = ckpt.model.aux_embeddings[column]
    grown = nn.Embedding(old.num_embeddings + len(new), old.embedding_dim)
    with torch.no_grad():
        grown.weight[: old.num_embeddings] = old.weight
        grown.weight[old.num_embeddings :] = old.weight[vocab["unknown"]]
    vocab.update({v: old.num_embeddings + i for i, v in enumerate(new)})
    ckpt.model.aux_embeddings[column] = grown  # in place: the model is the one being trained
    return dataclasses.replace(ckpt, aux_vocabs={**ckpt.aux_vocabs, column: vocab})
