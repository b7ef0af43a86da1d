"""`tfx generate`: sampled cells written as an h5ad of raw counts."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from tfx.atomic import atomic_path
from tfx.checkpoint import Checkpoint
from tfx.errors import InputError
from tfx.generate.sample import ORDERS, parse_prompt, sample_cells, species_of

log = logging.getLogger(__name__)

EXACT = "exact: drawn from the checkpoint's causal count head"
APPROXIMATE = ("approximate: the softmax count head's logit read as a per-position log-rate (its softmax over the "
               "whole cell and the cell's total count are not known while the cell is drawn)")


def check_options(n_cells: int, temperature: float, top_k: int | None, max_genes: int | None, order: str) -> None:
    if n_cells < 1:
        raise InputError(f"--n-cells {n_cells}: ask for at least 1 cell")
    if not temperature > 0:
        raise InputError(f"--temperature {temperature}: must be > 0 (1 samples the model as it is)")
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k {top_k}: must be at least 1 (leave it out to keep every gene)")
    if max_genes is not None and max_genes < 1:
        raise InputError(f"--max-genes {max_genes}: must be at least 1")
    if order not in ORDERS:
        raise InputError(f"--order {order}: choose var or free")


def generate_file(ckpt: Checkpoint, species: str, n_cells: int, output: str | os.PathLike, *,
                  prompt: str | None = None, assay: str | None = None, order: str = "var", temperature: float = 1.0,
                  top_k: int | None = None, max_genes: int | None = None, seed: int = 0, batch_size: int = 64,
                  device: str = "cpu") -> dict:
    check_options(n_cells, temperature, top_k, max_genes, order)
    if Path(output).is_dir():
        raise InputError(f"--output {output}: is a directory; name the .h5ad file to write")
    sp_info = species_of(ckpt, species)
    given = parse_prompt(ckpt, sp_info, prompt)
    generator = torch.Generator(device=device).manual_seed(seed)
    genes, counts, log_prob, ended = [], [], [], []
    for start in range(0, n_cells, batch_size):
        s = sample_cells(ckpt, sp_info, min(batch_size, n_cells - start), prompt=given, assay=assay, order=order,
                         temperature=temperature, top_k=top_k, max_genes=max_genes, generator=generator,
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
        "species": species, "assay": assay or "unknown", "seed": seed,
        "log_prob": np.concatenate(log_prob), "n_genes": [len(g) for g in genes],
        "ended": np.concatenate(ended), "clipped_counts": clipped,
    }, index=[f"generated_{i}" for i in range(n_cells)])
    var = pd.DataFrame({"ensembl_id": sp_info.genes}, index=sp_info.genes)
    counts_model = EXACT if ckpt.model.causal_counts else APPROXIMATE
    uns = {"generation": {
        "checkpoint": str(ckpt.path), "order": order, "temperature": temperature, "top_k": top_k or 0,
        "max_genes": max_genes or 0, "prompt": prompt or "", "seed": seed,
        "genes": "exact: drawn from the gene-id head, given the counts drawn before them",
        "counts": counts_model,
        "log_prob": "of the sampled positions (the prompt is given), under the distribution sampled: order "
                    "restriction, temperature and top-k renormalised, counts exact ZTP",
        "clip": f"counts above {clip} are kept raw in X; the model read them clipped (obs clipped_counts)",
    }}
    adata = anndata.AnnData(X=X.tocsr(), obs=obs, var=var, uns=uns,
                            obsm={"generation_order": generation_order})
    output = Path(output)
    with atomic_path(output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(tmp)
    if clipped.any():
        log.warning("%d sampled counts exceed the checkpoint's clip of %s (kept raw in X; obs clipped_counts)",
                    int(clipped.sum()), clip)
    return {"output": str(output), "cells": n_cells, "ended": int(obs["ended"].sum()),
            "mean_genes": float(obs["n_genes"].mean()), "counts": counts_model}
