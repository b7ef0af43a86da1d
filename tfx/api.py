"""The notebook API, in scverse conventions: functions take an in-memory AnnData, write their
results into it and return it (or the report).

    import tfx
    model = tfx.load("checkpoints/tf_sapiens")
    tfx.embed(adata, model, key="X_tfx")
    tfx.evaluate(adata, rep="X_tfx", label="cell_type")
    scanpy.pp.neighbors(adata, use_rep="X_tfx")

``tfx.embed`` runs ``tfx infer``'s engine (the same tokenization, batching and model calls) on the
AnnData in memory, so its numbers are the CLI's.
"""

from __future__ import annotations

import os

import anndata
import scipy.sparse as sp

from tfx.checkpoint import Checkpoint
from tfx.errors import InputError
from tfx.eval.report import evaluate_cells
from tfx.infer.run import InferOptions, infer_memory, load_for_inference

EMBED_OUTPUTS = ("embeddings", "llh", "gene_llh", "nll")


def load(path: str | os.PathLike, *, attention: str | None = None, clip_counts: float | None = None,
         species_embeddings: list[str | os.PathLike] | None = None) -> Checkpoint:
    """A checkpoint directory (official release or tfx export), served as ``tfx infer`` serves it;
    the arguments are its --attention, --clip-counts and --species-embedding."""
    return load_for_inference(path, attention=attention, clip_counts=clip_counts,
                              species_embeddings=species_embeddings)


def embed(adata: anndata.AnnData, model: Checkpoint, key: str = "X_tfx", *, emb_type: str = "cell",
          outputs: tuple[str, ...] = ("embeddings",), model_type: str = "transcriptformer", layer: int = -1,
          gene_col: str | None = None, use_raw: bool | None = None, remove_duplicate_genes: bool = False,
          batch_size: int = 256, token_budget: int = 16384, device: str = "auto", precision: str = "32"
          ) -> anndata.AnnData:
    """Cell embeddings in ``adata.obsm[key]`` (cells x dim, float32); with ``emb_type="cge"`` the
    reference's ``uns["cge_embeddings"]``, ``uns["cge_cell_indices"]``, ``uns["cge_gene_names"]``
    instead. ``outputs`` may add ``llh``, ``gene_llh`` (also ``obsm["gene_llh"]``) and ``nll`` as obs
    columns. The other arguments are ``tfx infer``'s options of the same names (``layer``:
    --embedding-layer-index, ``batch_size``: --batch-size). Returns ``adata``."""
    unknown = set(outputs) - set(EMBED_OUTPUTS)
    if unknown or not outputs:
        raise InputError(f"outputs: unknown {sorted(unknown)}; choose from {', '.join(EMBED_OUTPUTS)}")
    if not isinstance(adata, anndata.AnnData):
        raise InputError(f"adata: expected an AnnData, got {type(adata).__name__}; read a file with anndata.read_h5ad")
    opts = InferOptions(emb_type=emb_type, embeddings="embeddings" in outputs, llh="llh" in outputs,
                        gene_llh="gene_llh" in outputs, nll="nll" in outputs,
                        gene_col=gene_col or model.data_cfg.gene_col_name, use_raw=use_raw,
                        remove_duplicate_genes=remove_duplicate_genes, device=device, precision=precision,
                        token_budget=token_budget, max_cells=batch_size, model_type=model_type, layer=layer)
    arrays, uns = infer_memory(model, adata, opts)
    if "embeddings" in arrays:
        adata.obsm[key] = arrays["embeddings"]
    if "gene_llh_positions" in arrays:
        adata.obsm["gene_llh"] = arrays["gene_llh_positions"]
    for name in opts.scores:
        adata.obs[name] = arrays[name]
    adata.uns.update(uns)
    return adata


def evaluate(adata: anndata.AnnData, rep: str = "X_tfx", label: str = "cell_type", *, batch: str | None = None,
             counts: str | None = None, seed: int = 0, output_dir: str | os.PathLike | None = None,
             compare: list[str] | None = None, cz_benchmarks: bool = True) -> dict:
    """``tfx eval``'s report on ``adata.obsm[rep]`` for ``adata.obs[label]``, as a dict: label
    probes, silhouettes and, with ``batch`` (an obs column such as species), mixing and transfer.
    ``counts``: ``"X"`` or a layer of raw counts, for the PCA-of-log-counts baseline beside it.
    ``output_dir``: also write report.json, summary.md and the UMAPs there. ``compare``: other obsm
    keys (``"X_esm2ce"``, another model's embeddings), compared with ``rep`` on identical folds
    (per-fold paired differences and a bootstrap CI, ``report["compare"]``). ``cz_benchmarks``: also
    run the cz-benchmarks tasks and their baselines (``report["cz_benchmarks"]``) where installed."""
    if rep not in adata.obsm:
        raise InputError(f"rep: adata.obsm has no '{rep}' (keys: {', '.join(adata.obsm) or 'none'}); "
                         f"run tfx.embed(adata, model, key='{rep}') first or pass another rep")
    for option, column in (("label", label), ("batch", batch)):
        if column is not None and column not in adata.obs:
            raise InputError(f"{option}: adata.obs has no column '{column}' (columns: {', '.join(adata.obs.columns)})")
    if len(set(compare or [])) < len(compare or []):
        raise InputError(f"compare: {compare} names a key twice; name each obsm key once")
    for key in compare or []:
        if key not in adata.obsm or key == rep:
            raise InputError(f"compare: '{key}' is {'rep itself' if key == rep else 'not in adata.obsm'}; "
                             f"pass other obsm keys ({', '.join(k for k in adata.obsm if k != rep) or 'none'})")
    if counts is not None and counts != "X" and counts not in adata.layers:
        raise InputError(f"counts: adata has no layer '{counts}'; pass 'X' or one of: {', '.join(adata.layers)}")
    matrix = None if counts is None else sp.csr_matrix(adata.X if counts == "X" else adata.layers[counts])
    inputs = {"rep": rep, "counts": counts, "compare": list(compare or []), "label": label, "batch": batch, "seed": seed}
    compared = {key: adata.obsm[key] for key in [rep, *compare]} if compare else None
    return evaluate_cells(adata.obsm[rep], adata.obs, label, inputs, batch=batch, counts=matrix, seed=seed,
                          output_dir=output_dir, source=f"adata.obsm['{rep}']", compared=compared,
                          cz_benchmarks=cz_benchmarks)
