"""Tiny checkpoints with a causal count head, for generation tests, benchmarks and the
known-answer training check. The teacher's weights are scaled so that its distribution is far
from gene frequencies (random weights alone give a nearly uniform gene-id head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tfx.checkpoint import Checkpoint, save_checkpoint
from tfx.checkpoint.io import build_model
from tfx.model.config import DataConfig, ModelConfig
from tfx.vocab import GeneVocab, write_gene_embeddings
from tfx.vocab.aux import official_assay_vocab


def build_teacher(out_dir, species: str = "synth_alpha", n_genes: int = 60, emb_dim: int = 16, seed: int = 0,
                  scale: float = 3.0, end_bias: float = 0.0, early_bias: float = 0.0, data: dict | None = None,
                  genes: list[str] | None = None, **model) -> Path:
    """A random tiny model (pretrain/tiny's architecture unless ``model`` says otherwise) with a
    softplus count head and the exact ZTP normaliser, its gene-id head's output layer scaled by
    ``scale``, ``end_bias`` added to [END]'s logit and up to ``early_bias`` to the genes early in
    vocabulary order (so that cells drawn in var order run longer); ``data``: how it reads counts
    (DataConfig fields); ``genes``: its gene ids (default: ``n_genes`` made-up ones); saved as a checkpoint."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    genes = list(genes) if genes is not None else [f"{species.upper()}_{i:05d}" for i in range(n_genes)]
    n_genes = len(genes)
    vocab_dir = out.parent / f".{out.name}_vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    gene_file = vocab_dir / f"{species}_gene.h5"
    write_gene_embeddings(gene_file, genes, rng.normal(size=(n_genes, emb_dim)).astype(np.float32))
    cfg = ModelConfig(**{**dict(embed_dim=32, num_heads=4, num_layers=2, model_dim=64, dropout=0.0, seq_len=64,
                                gene_head_hidden_dim=64, attention="eager", mu_link_fn="softplus",
                                softplus_approx=False), **model})
    data_cfg = DataConfig(esm2_mappings=[gene_file.name], **(data or {}))
    vocab, table = GeneVocab.from_files(data_cfg.special_tokens, [gene_file])
    aux = {"assay": official_assay_vocab()}
    torch.manual_seed(seed)
    net = build_model(cfg, data_cfg, vocab, torch.as_tensor(table), aux)
    with torch.no_grad():
        if net.has_gene_head:  # far from gene frequencies: a scaled, biased gene-id head
            last = net.gene_id_head.layers[-1]
            last.weight.mul_(scale)
            last.bias.mul_(scale)
            last.bias[vocab.end] += end_bias
            last.bias[len(vocab.special_tokens):] += torch.linspace(early_bias, 0.0, n_genes)
    return save_checkpoint(Checkpoint(net, vocab, aux, cfg, data_cfg), out)
