"""The model a run starts from: a new one from the recipe's architecture and gene embedding files
(in a species preset's order), or the init checkpoint; either reads counts as the recipe (or the
init checkpoint) says, and gains the species and assays the recipe adds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from tfx.checkpoint import Checkpoint, load_checkpoint
from tfx.checkpoint.io import build_model
from tfx.checkpoint.surgery import add_aux_values, add_species
from tfx.data import preprocess
from tfx.errors import ConfigError, RecipeError
from tfx.model.config import DataConfig
from tfx.recipe.schema import Recipe
from tfx.vocab import GeneVocab, species_for_file
from tfx.vocab.aux import official_assay_vocab


def seed(value: int) -> None:
    """Seeds a new model's random weights."""
    import random

    import torch

    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _requested(r: Recipe) -> dict[str, float | str | None]:
    """How the recipe asks counts to be read (None: as recorded), as ``preprocess.resolve``'s keywords."""
    return dict(gene_order=r.data.gene_order, clip_counts=r.data.clip_counts, normalize_to_scale=r.data.normalize_to_scale)


def checkpoint(r: Recipe, src: str, device: str | None = None) -> Checkpoint:
    """The model training starts from, reading counts as the recipe (or the init checkpoint) says.
    ``device="meta"``: a new model's weights take no memory (its shapes, and so its parameter count,
    are exact); an init checkpoint is loaded as it is."""
    if r.init:
        ckpt = load_checkpoint(r.init)
        ckpt.model.train()
        ckpt = preprocess.apply(ckpt, f"{src}: data", f"init checkpoint {r.init}", **_requested(r))
    else:
        import torch

        files = _vocab_files(r, src)
        data_cfg = DataConfig(esm2_mappings=[os.path.basename(f) for f in files],
                              special_tokens=list(r.vocab.special_tokens), aux_cols=list(r.vocab.aux_cols),
                              gene_col_name=r.data.gene_col)
        data_cfg = preprocess.resolve(data_cfg, f"{src}: data", None, **_requested(r))
        vocab, table = GeneVocab.from_files(data_cfg.special_tokens, files)
        aux = {col: official_assay_vocab() for col in data_cfg.aux_cols}
        table = torch.as_tensor(table)  # the frozen protein table itself stays real
        try:
            with torch.device(device) if device else contextlib.nullcontext():
                model = build_model(r.model, data_cfg, vocab, table, aux)
        except ConfigError as err:  # a component name nobody registered (likelihood, heads, attention)
            raise RecipeError(f"{src}: model: {err}") from None
        ckpt = Checkpoint(model, vocab, aux, r.model, data_cfg)
    if r.vocab.add:
        ckpt = add_species(ckpt, list(r.vocab.add))
    if r.vocab.add_assays:
        ckpt = add_aux_values(ckpt, "assay", list(r.vocab.add_assays))
    ckpt.model.transformer_encoder.checkpointing = r.trainer.activation_checkpointing
    return ckpt


def _vocab_files(r: Recipe, src: str) -> list[str]:
    """vocab.embeddings, in the preset's species order when the recipe names a preset."""
    files = list(r.vocab.embeddings)
    if not files:
        raise RecipeError(f"{src}: vocab.embeddings lists no gene embedding file; set vocab.embeddings=[A_gene.h5,...]")
    if r.vocab.species is None:
        return files
    given = {species_for_file(Path(f).name): f for f in files}
    missing = [s for s in r.vocab.species if s not in given]
    if missing:
        raise RecipeError(f"{src}: the {r.vocab.preset} vocabulary has {len(r.vocab.species)} species and "
                          f"vocab.embeddings lacks {', '.join(missing)}; add {missing[0]}_gene.h5")
    extra = [s for s in given if s not in r.vocab.species]
    if extra:
        raise RecipeError(f"{src}: {', '.join(extra)} is not a species of the {r.vocab.preset} vocabulary; "
                          "drop it, or choose vocab=default for a species set of your own")
    return [given[s] for s in r.vocab.species]
