"""Prompting a checkpoint: the next gene after a prompt, gene-gene effects, cell-type programmes.

- ``next_gene``: the distribution of the next position over the species' genes not in the prompt
  (and [END]), with each gene's expected count if it were drawn there.
- ``gene_gene``: log p(g2 next | prompt g1) - log p(g2 next | empty prompt), the model's own
  distribution (no renormalisation: the ratio is the same).
- ``programmes``: each cell type's most expressed markers as a prompt, candidates ranked by their
  probability of being in the cell, estimated from importance-weighted sampled cells (``presence``).
- ``marker_recovery``: on a `tfx synth` atlas, whose true marker programmes are known, how well a
  prompt of half a programme ranks the other half (AUROC), beside gene frequency alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from tfx.atomic import atomic_path
from tfx.checkpoint import Checkpoint
from tfx.errors import InputError
from tfx.progress import progress
from tfx.data.anndata import CellReader
from tfx.data.preprocess import preprocessing
from tfx.generate.sample import Prompt, Sampled, Species, aux_tensor, check_prompt_length, parse_genes, sample_cells

log = logging.getLogger(__name__)


def _prompt_hidden(ckpt: Checkpoint, prompts: list[Prompt], assay: str | None) -> torch.Tensor:
    """[P, E] the output after reading each prompt (prompts of one length), which predicts the next gene."""
    model, prep = ckpt.model.eval(), preprocessing(ckpt)
    prep.require_causal("prompting", ckpt.path)
    hidden, state = model.decode_start(len(prompts), aux_tensor(ckpt, assay, len(prompts), "cpu"))
    if prompts[0].ids:
        ids = torch.tensor([p.ids for p in prompts])
        counts = torch.tensor([p.counts for p in prompts], dtype=torch.float32)
        hidden = model.decode_genes(state, ids, prep.read_counts(counts))
    return hidden


def _ztp_mean(rate: torch.Tensor) -> torch.Tensor:
    return rate / -torch.expm1(-rate)


@torch.no_grad()
def next_gene(ckpt: Checkpoint, species: Species, prompt: Prompt, *, assay: str | None = None,
              top_k: int = 20) -> pd.DataFrame:
    """The top ``top_k`` next genes (and [END] where it ranks): probability, expected count."""
    model = ckpt.model.eval()
    hidden = _prompt_hidden(ckpt, [prompt], assay)
    allowed = species.mask(model.vocab_size, "cpu")
    allowed[prompt.ids] = False
    allowed[model.special.end] = True
    logits = model.next_gene_logits(hidden)[0].masked_fill(~allowed, float("-inf"))
    prob = torch.softmax(logits, dim=-1)
    top = torch.topk(prob, min(top_k, int(allowed.sum()))).indices
    genes = top.masked_fill(top == model.special.end, model.special.pad)  # [END] has no count
    rate = model.count_rate(hidden.expand(len(top), -1), genes).float() + model.cfg.log_counts_eps
    tokens = np.array(ckpt.vocab.tokens, dtype=object)
    return pd.DataFrame({"gene": tokens[top.numpy()], "probability": prob[top].numpy(),
                         "expected_count": np.where(top.numpy() == model.special.end, np.nan,
                                                    _ztp_mean(rate).numpy())})


@torch.no_grad()
def gene_gene(ckpt: Checkpoint, genes: list[int], *, count: float = 1.0, assay: str | None = None) -> np.ndarray:
    """[len(genes), len(genes)] log p(g2 next | g1) - log p(g2 next | nothing), rows g1."""
    model = ckpt.model.eval()
    empty = torch.log_softmax(model.next_gene_logits(_prompt_hidden(ckpt, [Prompt()], assay)), dim=-1)[0]
    prompted = torch.log_softmax(
        model.next_gene_logits(_prompt_hidden(ckpt, [Prompt([g], [count]) for g in genes], assay)), dim=-1)
    cols = torch.tensor(genes)
    return (prompted[:, cols] - empty[cols][None]).numpy()


def presence(sampled: Sampled, candidates: list[int]) -> np.ndarray:
    """[candidates] each candidate's probability of being in the cell: the mean over the sampled
    cells of whether it was drawn, each cell weighted by its self-normalised ``log_weight`` (exact
    as cells grow). Not the per-step chances of ``inclusion``: they condition on a cell's past
    only, while its weight depends on all of it (a var prompt's first step has the same chances in
    every cell, whatever the weights), so weighted they are biased."""
    w = weights(sampled.log_weight)
    cols = {g: j for j, g in enumerate(candidates)}
    hits = np.zeros((len(sampled.genes), len(candidates)))
    for i, genes in enumerate(sampled.genes):
        hits[i, [cols[g] for g in genes if g in cols]] = 1.0
    return w @ hits


def weights(log_weight: np.ndarray) -> np.ndarray:
    """The cells' self-normalised importance weights (summing to 1)."""
    w = np.exp(log_weight - log_weight.max())
    return w / w.sum()


def effective_cells(log_weight: np.ndarray) -> float:
    """Kish's effective sample size of the weighted cells: (sum w)^2 / sum w^2."""
    return float(1.0 / (weights(log_weight) ** 2).sum())


@torch.no_grad()
def programme_presence(ckpt: Checkpoint, species: Species, markers: list[int], candidates: list[int], *,
                       counts: list[float] | None = None, assay: str | None = None, order: str = "var",
                       cells: int = 64, max_genes: int | None = None, seed: int = 0) -> tuple[np.ndarray, float]:
    """[candidates] each candidate's probability of being in a cell that holds ``markers`` (with
    ``counts``, 1 each by default), estimated from ``cells`` sampled cells (``presence``), and the
    effective number of cells behind it (Kish)."""
    prompt = Prompt(list(markers), list(counts) if counts is not None else [1.0] * len(markers))
    sampled = sample_cells(ckpt, species, cells, prompt=prompt, assay=assay,
                           order=order, max_genes=max_genes, generator=torch.Generator().manual_seed(seed))
    return presence(sampled, candidates), effective_cells(sampled.log_weight)


@dataclass
class MarkerSplit:
    """One cell type's true programme split in two: ``prompt`` half, the rest marked in ``held_out``."""

    cell_type: str
    prompt: Prompt  # each gene at its mean count in the type's cells (at least 1)
    candidates: list[int]  # the species' other genes (vocabulary ids)
    held_out: np.ndarray  # [candidates] bool: the programme's other half
    frequency: np.ndarray  # [candidates] each gene's detection rate over the atlas: the baseline


def marker_splits(ckpt: Checkpoint, species: Species, adata, seed: int = 0) -> list[MarkerSplit]:
    """Each type of a `tfx synth` atlas (``uns["marker_programmes"]``), its programme split at random."""
    if "marker_programmes" not in adata.uns:
        raise InputError("the atlas has no uns['marker_programmes']; marker recovery needs an atlas from tfx synth")
    column = {g: i for i, g in enumerate(adata.var["ensembl_id"])}
    detected = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    rng = np.random.default_rng(seed)
    splits = []
    for cell_type, programme in adata.uns["marker_programmes"].items():
        genes = [g for g in rng.permutation(programme) if g in ckpt.vocab.index]
        prompt, held_out = genes[: len(genes) // 2], set(genes[len(genes) // 2 :])
        mine = (adata.obs["cell_type"] == cell_type).to_numpy()
        counts = np.asarray(adata.X[mine][:, [column[g] for g in prompt]].mean(axis=0)).ravel()
        candidates = [g for g in species.genes if g not in set(prompt)]
        splits.append(MarkerSplit(str(cell_type), Prompt([ckpt.vocab.index[g] for g in prompt],
                                                         list(np.maximum(1.0, np.round(counts)))),
                                  [ckpt.vocab.index[g] for g in candidates],
                                  np.array([g in held_out for g in candidates]),
                                  detected[[column[g] for g in candidates]]))
    return splits


def marker_recovery(ckpt: Checkpoint, species: Species, adata, *, cells: int = 64, seed: int = 0) -> dict:
    """Per type of a `tfx synth` atlas and on average: the AUROC of the held-out half of its
    programme against the other candidates, ranked by ``programme_presence`` (``auroc``) and by
    their lift over an unprompted cell's probability (``lift_auroc``), beside gene frequency alone
    (``frequency_auroc``), with the effective number of weighted cells behind each estimate."""
    from sklearn.metrics import roc_auc_score

    unprompted = sample_cells(ckpt, species, cells, generator=torch.Generator().manual_seed(seed),
                              inclusion=True).inclusion.mean(axis=0)  # per-step chances: exact without a prompt
    types = {}
    for s in marker_splits(ckpt, species, adata, seed):
        scores, ess = programme_presence(ckpt, species, s.prompt.ids, s.candidates, counts=s.prompt.counts,
                                         cells=cells, seed=seed)
        lift = np.log(scores + 1e-6) - np.log(unprompted[s.candidates] + 1e-6)
        types[s.cell_type] = {"auroc": roc_auc_score(s.held_out, scores), "lift_auroc": roc_auc_score(s.held_out, lift),
                              "frequency_auroc": roc_auc_score(s.held_out, s.frequency), "effective_cells": ess}
    mean = {key: float(np.mean([t[key] for t in types.values()])) for key in next(iter(types.values()))}
    return {"cells": cells, "seed": seed, "types": types, "mean": mean}


MAX_TYPES = 1000  # more distinct labels are cell ids or measurements, not cell types


def cell_types(column: pd.Series, label: str) -> np.ndarray:
    """[cells] each cell's type as a string, None where it has none. A numeric column is a set of
    categories only when its values are whole numbers (cluster ids, often floats beside a NaN):
    they read as "3", never "3.0"; other numbers are measurements, refused."""
    labelled = column.notna().to_numpy()
    if not labelled.any():
        raise InputError(f"--label {label}: no cell of the data has a label; pass a labelled column")
    if not labelled.all():  # not a type named 'nan'
        log.warning("--label %s: %d of %d cells have no label; they are left out", label, (~labelled).sum(),
                    len(labelled))
    values = column.to_numpy()
    if pd.api.types.is_float_dtype(column.dtype):
        numbers = column.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers)) & (np.abs(numbers) < 2**53)
        if (labelled & ~whole).any():
            raise InputError(f"--label {label}: holds numbers such as {numbers[labelled & ~whole][0]:g}, not cell "
                             "types; pass a categorical or string obs column (or whole-number cluster ids)")
        values = np.where(labelled, numbers, 0).astype(np.int64)
    labels = np.where(labelled, values.astype(str), None)
    n_types = len(set(labels[labelled]))
    if n_types > MAX_TYPES:
        raise InputError(f"--label {label}: holds {n_types} distinct values, more than {MAX_TYPES} cell types; "
                         "pass an obs column of cell types")
    return labels


def type_markers(adata, label: str, vocab_ids: np.ndarray, n: int) -> dict[str, list[int]]:
    """Each label's ``n`` most expressed marker genes in the vocabulary: highest mean log1p of
    normalised counts in the type minus the mean over the other types."""
    if label not in adata.obs.columns:
        raise InputError(f"--label {label}: not an obs column of the data ({', '.join(adata.obs.columns)})")
    X = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    totals = np.asarray(X.sum(axis=1)).ravel()
    logn = sp.diags(1e4 / np.maximum(totals, 1)) @ X
    logn.data = np.log1p(logn.data)
    labels = cell_types(adata.obs[label], label)
    labelled = pd.notna(labels)
    types = sorted(set(labels[labelled]))
    means = np.stack([np.asarray(logn[labels == t].mean(axis=0)).ravel() for t in types])
    in_vocab = vocab_ids >= 0
    out = {}
    for i, t in enumerate(types):
        others = np.delete(means, i, axis=0).mean(axis=0) if len(types) > 1 else 0
        lift = np.where(in_vocab, means[i] - others, -np.inf)
        best = np.argsort(-lift, kind="stable")[:n]
        out[t] = [int(vocab_ids[j]) for j in best if np.isfinite(lift[j])]
    return out


def heatmap_png(path: str | os.PathLike, matrix: np.ndarray, rows: list[str], cols: list[str], title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend, no global state

    fig = Figure(figsize=(max(4, 0.35 * len(cols) + 2), max(3, 0.35 * len(rows) + 1.5)))
    ax = fig.add_subplot()
    finite = np.abs(matrix[np.isfinite(matrix)])
    bound = float(finite.max()) if finite.size else 1.0
    im = ax.imshow(matrix, cmap="RdBu_r" if (matrix < 0).any() else "viridis",
                   vmin=-bound if (matrix < 0).any() else None, vmax=bound)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def gene_list(ckpt: Checkpoint, species: Species, text: str, option: str) -> list[int]:
    """Vocabulary ids of 'G1,G2,...' or of a file with one gene per line."""
    if os.path.isfile(text):
        with open(text) as f:
            text = ",".join(line.split()[0] for line in f if line.strip() and not line.startswith("#"))
    elif "," not in text and ("/" in text or os.path.splitext(text)[1].lower() in (".txt", ".csv", ".tsv", ".list")):
        raise InputError(f"{option} {text}: no such file; give the path of a file with one gene per line, or G1,G2,...")
    ids = parse_genes(ckpt, species, text, option).ids
    if not ids:
        raise InputError(f"{option}: names no gene; give G1,G2,... or a file with one gene per line")
    return ids


def run_programmes(ckpt: Checkpoint, species: Species, data: str | os.PathLike, label: str, candidates: list[int],
                   output: str | os.PathLike, *, n_markers: int = 6, gene_col: str = "ensembl_id",
                   assay: str | None = None, order: str = "var", cells: int = 64, seed: int = 0) -> pd.DataFrame:
    """programmes.csv (cell type x candidate: p(candidate in the cell | the type's markers)), the
    markers used and the effective number of weighted cells behind each row (markers.csv) and a
    heatmap, under ``output``."""
    from pathlib import Path

    check_prompt_length(ckpt, n_markers, "--markers")
    in_species = set(species.genes)
    reader = CellReader(data, lambda genes: [ckpt.vocab.index[g] if g in in_species else -1 for g in genes],
                        gene_col=gene_col)
    try:
        counts = reader.read_rows(0, reader.n_cells)
        reader.check_values(counts.data, 0)
        if not counts.nnz:
            raise InputError(f"{data}: X holds no counts; programmes need the raw counts of labelled cells")
        adata = anndata.AnnData(counts, obs=reader.read_obs())
    finally:
        reader.close()
    vocab_ids = reader.column_ids
    markers = type_markers(adata, label, vocab_ids, n_markers)
    tokens = np.array(ckpt.vocab.tokens, dtype=object)
    scores = {}
    with progress(total=len(markers), desc="programmes", unit="type") as bar:
        for t, m in markers.items():
            scores[t] = programme_presence(ckpt, species, m, candidates, assay=assay, order=order, cells=cells,
                                           seed=seed)
            bar.update()
    for t, (_, ess) in scores.items():
        if ess < cells / 10:
            log.warning("%s: the %d sampled cells weigh as %.1f; the estimate is noisy, raise --cells", t, cells, ess)
    table = pd.DataFrame({t: s for t, (s, _) in scores.items()}, index=tokens[candidates]).T
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "programmes.csv") as tmp:
        table.to_csv(tmp, index_label=label)
    with atomic_path(out / "markers.csv") as tmp:
        pd.DataFrame({label: list(markers), "markers": [",".join(tokens[m]) for m in markers.values()],
                      "effective_cells": [ess for _, ess in scores.values()]}).to_csv(tmp, index=False)
    heatmap_png(out / "programmes.png", table.to_numpy(), list(table.index), list(table.columns),
                "p(candidate in the cell | the type's markers)")
    return table
