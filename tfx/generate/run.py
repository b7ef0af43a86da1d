"""`tfx generate`: sampled cells written as an h5ad of raw counts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from tfx.atomic import write_h5ad
from tfx.checkpoint import Checkpoint
from tfx.errors import InputError
from tfx.generate.options import GenerateCommand, GenerateOptions  # noqa: F401 (tfx.generate.run's API)
from tfx.generate.sample import parse_prompt, sample_cells, species_of

log = logging.getLogger(__name__)

EXACT = "exact: drawn from the checkpoint's causal count head"
APPROXIMATE = ("approximate: the softmax count head's logit read as a per-position log-rate (its softmax over the "
               "whole cell and the cell's total count are not known while the cell is drawn)")


def generate_file(ckpt: Checkpoint, output: str | os.PathLike, opts: GenerateOptions, device: torch.device) -> dict:
    """``generate_cells`` written to ``output`` (whole, then renamed); returns a small summary."""
    if Path(output).is_dir():
        raise InputError(f"--output {output}: is a directory; name the .h5ad file to write")
    adata = generate_cells(ckpt, opts, device)
    output = Path(output)
    write_h5ad(adata, output)
    return {"output": str(output), "cells": adata.n_obs, "ended": int(adata.obs["ended"].sum()),
            "mean_genes": float(adata.obs["n_genes"].mean()), "counts": adata.uns["generation"]["counts"]}


def generate_cells(ckpt: Checkpoint, opts: GenerateOptions, device: torch.device) -> anndata.AnnData:
    """``opts.n_cells`` cells sampled on ``device``: raw counts in X, obs log_prob, n_genes, ended and
    clipped_counts, obsm["generation_order"] and how they were drawn in uns["generation"]."""
    n_cells, species, prompt, assay, order = opts.n_cells, opts.species, opts.prompt, opts.assay, opts.order
    sp_info = species_of(ckpt, species)
    given = parse_prompt(ckpt, sp_info, prompt)
    most = ckpt.model_cfg.seq_len - 1  # the last position predicts [END]
    if opts.max_genes and opts.max_genes > most:
        raise InputError(f"--max-genes {opts.max_genes}: more than the {most} genes a cell of this checkpoint can "
                         f"have (its seq_len less one); pass at most {most}")
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    genes, counts, log_prob, ended = [], [], [], []
    for start in range(0, n_cells, opts.batch_size):
        s = sample_cells(ckpt, sp_info, min(opts.batch_size, n_cells - start), prompt=given, assay=assay, order=order,
                         temperature=opts.temperature, top_k=opts.top_k, max_genes=opts.max_genes, generator=generator,
                         device=device)
        genes += s.genes
        counts += s.counts
        log_prob.append(s.log_prob)
        ended.append(s.ended)
    column = {int(v): c for c, v in enumerate(sp_info.ids)}
    order_cols = [np.array([column[int(g)] for g in row], dtype=np.int32) for row in genes]
    width = max((len(r) for r in order_cols), default=0)
    X = sp.lil_matrix((n_cells, len(sp_info.genes)), dtype=np.float32)
    generation_order = np.full((n_cells, width), -1, dtype=np.int32)
    for i, (cols, c) in enumerate(zip(order_cols, counts)):
        if len(cols):
            X[i, cols] = c
        generation_order[i, : len(cols)] = cols
    clip = ckpt.data_cfg.clip_counts
    sampled = [c[~np.isin(g, given.ids)] for g, c in zip(genes, counts)]  # the prompt's counts are given
    clipped = np.array([int((c > clip).sum()) if clip else 0 for c in sampled])
    obs = pd.DataFrame({
        "species": species, "assay": assay or "unknown", "seed": opts.seed,
        "log_prob": np.concatenate(log_prob), "n_genes": [len(g) for g in genes],
        "ended": np.concatenate(ended), "clipped_counts": clipped,
    }, index=[f"generated_{i}" for i in range(n_cells)])
    var = pd.DataFrame({"ensembl_id": sp_info.genes}, index=sp_info.genes)
    counts_model = EXACT if ckpt.model.causal_counts else APPROXIMATE
    uns = {"generation": {
        "checkpoint": str(ckpt.path), "order": order, "temperature": opts.temperature, "top_k": opts.top_k or 0,
        "max_genes": opts.max_genes or 0, "prompt": prompt or "", "seed": opts.seed,
        "genes": "exact: drawn from the gene-id head, given the counts drawn before them",
        "counts": counts_model,
        "log_prob": "of the sampled positions (the prompt is given), under the distribution sampled: order "
                    "restriction, temperature and top-k renormalised, counts exact ZTP",
        "clip": f"counts above {clip} are kept raw in X; the model read them clipped (obs clipped_counts)",
    }}
    if clipped.any():
        log.warning("%d sampled counts exceed the checkpoint's clip of %s (kept raw in X; obs clipped_counts)",
                    int(clipped.sum()), clip)
    return anndata.AnnData(X=X.tocsr(), obs=obs, var=var, uns=uns, obsm={"generation_order": generation_order})
