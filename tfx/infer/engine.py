"""Running a model over tokenized cells: length-sorted batches under a token budget, padded only
to each batch's longest cell, results scattered back to input order."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from tfx.model.transcriptformer import TranscriptFormer
from tfx.tokenize.batches import BatchPlanner, BatchSpec


@dataclass
class Outputs:
    """What inference produced for a run of cells, in input order."""

    cells: int = 0
    embeddings: np.ndarray | None = None  # [N, E] cell embeddings
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per-cell obs columns: llh, gene_llh, nll
    gene_llh_positions: np.ndarray | None = None  # [N, seq_len] the gene-id head's NLL per position (the reference's)
    cge_embeddings: list[np.ndarray] = field(default_factory=list)  # per cell: [n_genes, E]
    cge_gene_ids: list[np.ndarray] = field(default_factory=list)  # per cell: vocab ids
    predictions: np.ndarray | None = None  # [N, classes] probabilities, or [N, 1] regression values


def autocast(device: torch.device, precision: str):
    if precision in ("32", "32-true", "fp32"):
        return nullcontext()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def run_cells(
    model: TranscriptFormer,
    cells: list[tuple[np.ndarray, np.ndarray]],
    aux_ids: np.ndarray | None,
    pad_id: int,
    *,
    emb_type: str = "cell",
    scores: tuple[str, ...] = (),
    task: torch.nn.Module | None = None,
    batches: BatchSpec = BatchSpec(),
    device: torch.device | str = "cpu",
    precision: str = "32",
    model_type: str = "transcriptformer",
    layer: int = -1,
) -> Outputs:
    """``model_type``: ``transcriptformer``, or ``esm2ce`` (the reference's ESM2-CE baseline: the
    frozen protein embeddings pooled as the model's outputs are, no transformer). ``layer``: the
    transformer layer the embeddings come from (-1: the last). ``scores``: any of ``llh`` (the reference's mean count NLL per cell), ``gene_llh`` (the
    reference's per-position gene-id NLL, and its mean over each cell's genes) and ``nll`` (each
    cell's total negative log-probability under the training factorisation). ``task``: a
    fine-tuned head (a TASKS entry) whose predictions are wanted."""
    device = torch.device(device)
    seq_len = model.cfg.seq_len
    planner = BatchPlanner(seq_len, 0 if aux_ids is None else np.shape(aux_ids)[1], batches)
    n = len(cells)
    out = Outputs(cells=n)
    if emb_type == "cell":
        dim = model.gene_embeddings.embedding.embedding_dim if model_type == "esm2ce" else model.cfg.embed_dim
        out.embeddings = np.zeros((n, dim), dtype=np.float32)
    else:
        out.cge_embeddings, out.cge_gene_ids = [None] * n, [None] * n
    out.scores = {name: np.zeros(n, dtype=np.float32) for name in scores}
    if "gene_llh" in scores:
        out.gene_llh_positions = np.zeros((n, seq_len), dtype=np.float32)
    if task is not None:
        task = task.to(device).eval()
        out.predictions = np.zeros((n, len(task.classes) if task.categorical else 1), dtype=np.float32)
    heads = bool({"llh", "gene_llh"} & set(scores))
    for plan in planner.plan([min(len(ids), seq_len) for ids, _ in cells]):
        batch, idx = planner.emit(plan, cells.__getitem__, aux_ids, pad_id)
        batch = batch.to(device)
        with autocast(device, precision):
            if model_type == "esm2ce":
                res = model.protein_output(batch)
            else:
                res = model(batch, embed=True, heads=heads, layer=layer)
            # the training forward (no count bias on the diagonal): the factorisation a sampler draws from
            trained = model(batch) if "nll" in scores else None
            cell_emb = model.cell_embeddings(res) if emb_type == "cell" or task is not None else None
            if task is not None:  # as the fine-tuning module predicts: the head on the cell embedding
                pred = task.head(cell_emb)
                out.predictions[idx] = (pred.softmax(-1) if task.categorical else pred).float().cpu().numpy()
        if emb_type == "cell":
            out.embeddings[idx] = cell_emb.float().cpu().numpy()
        else:
            hidden = res.hidden.float().cpu().numpy()
            for row, i in enumerate(idx):
                k = min(len(cells[i][0]), seq_len)
                out.cge_embeddings[i] = hidden[row, :k]
                out.cge_gene_ids[i] = batch.gene_ids[row, :k].cpu().numpy()
        if "llh" in scores:
            out.scores["llh"][idx] = model.cell_nll(res, batch).float().cpu().numpy()
        if "gene_llh" in scores:
            per_position = model.position_gene_nll(res, batch)
            genes = (~res.gene_masked).sum(dim=1)
            out.scores["gene_llh"][idx] = (per_position.sum(dim=1) / genes).cpu().numpy()  # NaN: no gene
            out.gene_llh_positions[idx, : per_position.shape[1]] = per_position.cpu().numpy()
        if trained is not None:
            out.scores["nll"][idx] = model.sequence_nll(trained, batch).cpu().numpy()
    return out
