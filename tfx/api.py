"""The notebook API, in scverse conventions: functions take an in-memory AnnData, write their
results into it and return it (or the report).

    import tfx
    model = tfx.load("checkpoints/tf_sapiens")
    tfx.embed(adata, model, key="X_tfx")
    tfx.evaluate(adata, rep="X_tfx", label="cell_type")
    scanpy.pp.neighbors(adata, use_rep="X_tfx")
    cells = tfx.generate_cells(model, "homo_sapiens", 100)  # tfx.generate is the package

``tfx.embed`` runs ``tfx infer``'s engine (the same tokenization, batching and model calls) on the
AnnData in memory, so its numbers are the CLI's. Each function's options are the command's option
types (``LoadOptions``, ``InferOptions``, ``GenerateOptions``, ``EvalOptions``): the same names,
defaults and checks, so a value the command line refuses is refused here, before any work, with
an ``InputError`` naming the argument.
"""

from __future__ import annotations

import os

import anndata
import numpy as np
import scipy.sparse as sp

from tfx.checkpoint import Checkpoint
from tfx.errors import InputError
from tfx.eval.run import EvalOptions
from tfx.generate import run as generation
from tfx.data.soma import SomaSource
from tfx.infer.run import InferOptions, LoadOptions, infer_cells, infer_memory, load_for_inference, resolve_devices


def load(path: str | os.PathLike, *, attention: str | None = None, clip_counts: float | None = None,
         species_embeddings: list[str | os.PathLike] | None = None) -> Checkpoint:
    """A checkpoint directory (official release or tfx export), served as ``tfx infer`` serves it;
    the arguments are its --attention, --clip-counts and --species-embedding."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path: expected a checkpoint directory, got {type(path).__name__}")
    opts = LoadOptions(attention=attention, clip_counts=clip_counts, species_embeddings=species_embeddings)
    return load_for_inference(path, opts)


def _model(model) -> Checkpoint:
    if not isinstance(model, Checkpoint):
        hint = f"; pass tfx.load({str(model)!r})" if isinstance(model, (str, os.PathLike)) else ""
        raise InputError(f"model: expected a checkpoint loaded by tfx.load(path), got {type(model).__name__}{hint}")
    return model


def _adata(adata) -> anndata.AnnData:
    if not isinstance(adata, anndata.AnnData):
        raise InputError(f"adata: expected an AnnData, got {type(adata).__name__}; read a file with anndata.read_h5ad")
    return adata


def embed(adata: anndata.AnnData, model: Checkpoint, key: str = "X_tfx", *, emb_type: str = "cell",
          outputs: tuple[str, ...] = ("embeddings",), batch_size: int = 256, token_budget: int = 16384,
          device: str = "auto", precision: str = "32", gene_col: str | None = None, use_raw: bool | None = None,
          remove_duplicate_genes: bool = False, chunk_size: int = 4096, model_type: str = "transcriptformer",
          layer: int = -1, measurement: str = "RNA", obs_filter: str | None = None) -> anndata.AnnData:
    """Cell embeddings in ``adata.obsm[key]`` (cells x dim, float32); with ``emb_type="cge"`` the
    reference's ``uns["cge_embeddings"]``, ``uns["cge_cell_indices"]``, ``uns["cge_gene_names"]``
    instead. ``outputs`` may add ``llh``, ``gene_llh`` (also ``obsm["gene_llh"]``) and ``nll`` as obs
    columns. The other arguments are ``tfx infer``'s options of the same names (``layer``:
    --embedding-layer-index). ``adata`` may also be what ``tfx infer --data`` reads: an h5ad path, a
    list of them, a tfx shard directory, or a TileDB-SOMA experiment (a directory or URI; its
    ``measurement``'s cells that ``obs_filter`` selects); their cells are embedded into a new AnnData
    of their obs (as tfx infer writes it), which is returned. Returns ``adata``."""
    opts = InferOptions(emb_type=emb_type, outputs=outputs, batch_size=batch_size, token_budget=token_budget,
                        device=device, precision=precision, gene_col=gene_col, use_raw=use_raw,
                        remove_duplicate_genes=remove_duplicate_genes, chunk_size=chunk_size, model_type=model_type,
                        layer=layer, measurement=measurement, obs_filter=obs_filter)
    if opts.predictions:
        raise InputError("outputs: predictions are written by tfx infer only (obs <label>_pred, <label>_prob); "
                         "run it on a file, or ask embeddings, llh, gene_llh or nll")
    if not isinstance(key, str) or not key.strip() or "/" in key or not key.isprintable():  # what an h5ad can store
        raise InputError(f"key: {key!r} is not a name for the obsm key of the embeddings (a non-empty string "
                         "without '/' or control characters), e.g. key='X_tfx'")
    if isinstance(adata, anndata.AnnData):
        arrays, uns = infer_memory(_model(model), adata, opts)
    elif isinstance(adata, (str, os.PathLike, SomaSource, list, tuple)):
        obs, arrays, uns = infer_cells(_model(model), adata, opts)
        adata = anndata.AnnData(obs=obs)
    else:
        raise InputError(f"adata: expected an AnnData, or what tfx infer --data reads (h5ad paths, a tfx shard "
                         f"directory, a TileDB-SOMA experiment), got {type(adata).__name__}")
    if "embeddings" in arrays:
        adata.obsm[key] = arrays["embeddings"]
    if "gene_llh_positions" in arrays:
        adata.obsm["gene_llh"] = arrays["gene_llh_positions"]
    for name in opts.scores:
        adata.obs[name] = arrays[name]
    adata.uns.update(uns)
    return adata


def generate_cells(model: Checkpoint, species: str, n_cells: int, *, assay: str | None = None, prompt: str | None = None,
             order: str = "var", temperature: float = 1.0, top_k: int | None = None, max_genes: int | None = None,
             seed: int = 0, batch_size: int = 64, device: str = "auto") -> anndata.AnnData:
    """``n_cells`` cells of ``species`` sampled from ``model``, as ``tfx generate`` writes them: raw
    counts in X, ``obs["log_prob"]`` (exact under the distribution sampled), ``obs["n_genes"]``,
    ``obs["ended"]``, ``obsm["generation_order"]`` and ``uns["generation"]``. The arguments are
    ``tfx generate``'s options of the same names (docs/generation.md)."""
    opts = generation.GenerateOptions(species=species, n_cells=n_cells, assay=assay, prompt=prompt, order=order,
                           temperature=temperature, top_k=top_k, max_genes=max_genes, seed=seed,
                           batch_size=batch_size, device=device)
    model = _model(model)
    return generation.generate_cells(model, opts, resolve_devices(opts.device)[0])


def evaluate(adata: anndata.AnnData, rep: str = "X_tfx", label: str = "cell_type", *, batch: str | None = None,
             counts: str | None = None, seed: int = 42, output_dir: str | os.PathLike | None = None,
             compare: list[str] | None = None, maps: str = "umap", cz_benchmarks: bool = True,
             model: Checkpoint | None = None, overwrite: bool = False) -> dict:
    """``tfx eval``'s report on ``adata.obsm[rep]`` for ``adata.obs[label]``, as a dict: label
    probes, silhouettes and, with ``batch`` (an obs column such as species), mixing and transfer.
    ``counts``: ``"X"`` or a layer of raw counts, for the PCA-of-log-counts baseline beside it.
    ``output_dir``: also write report.json, summary.md and the ``maps`` there ("umap", "pca": instant,
    or "none"). ``compare``: other obsm
    keys (``"X_esm2ce"``, another model's embeddings), compared with ``rep`` on identical folds
    (per-fold paired differences and a bootstrap CI, ``report["compare"]``). ``cz_benchmarks``: also
    run the cz-benchmarks tasks and their baselines (``report["cz_benchmarks"]``) where installed.
    ``model``: the checkpoint the embeddings came from (``tfx.load``): adds its ESM2-CE baseline
    (pooled protein embeddings of the ``counts``), as ``tfx eval --checkpoint`` does. ``overwrite``:
    replace a report already in ``output_dir`` (nothing else there is ever replaced)."""
    from tfx.eval.inputs import check_embeddings
    from tfx.eval.report import evaluate_cells
    from tfx.eval.run import REPORT
    from tfx.outputs import check_output

    if not isinstance(overwrite, bool):  # a string such as "no" would be true
        raise InputError(f"overwrite: {overwrite!r} is not True or False")
    if output_dir is not None:
        if not isinstance(output_dir, (str, os.PathLike)):
            raise InputError(f"output_dir: expected a directory path, got {type(output_dir).__name__}")
        check_output(output_dir, REPORT, overwrite=overwrite, option="output_dir")

    opts = EvalOptions(label=label, batch=batch, seed=seed, maps=maps, cz_benchmarks=cz_benchmarks)
    adata = _adata(adata)
    if rep not in adata.obsm:
        raise InputError(f"rep: adata.obsm has no '{rep}' (keys: {', '.join(adata.obsm) or 'none'}); "
                         f"run tfx.embed(adata, model, key='{rep}') first or pass another rep")
    for option, column in (("label", label), ("batch", batch)):
        if column is not None and column not in adata.obs:
            raise InputError(f"{option}: adata.obs has no column '{column}' (columns: {', '.join(adata.obs.columns)})")
    compare = [compare] if isinstance(compare, str) else compare or []
    if not isinstance(compare, (list, tuple)) or not all(isinstance(key, str) for key in compare):
        raise InputError(f"compare: expected obsm keys (a string or a list of them), got {compare!r}")
    if len(set(compare)) < len(compare):
        raise InputError(f"compare: {compare} names a key twice; name each obsm key once")
    for key in compare:
        if key not in adata.obsm or key == rep:
            raise InputError(f"compare: '{key}' is {'rep itself' if key == rep else 'not in adata.obsm'}; "
                             f"pass other obsm keys ({', '.join(k for k in adata.obsm if k != rep) or 'none'})")
    for key in [rep, *compare]:
        check_embeddings(np.asarray(adata.obsm[key]), adata.n_obs, f"adata.obsm['{key}']")
    if counts is not None and counts != "X" and counts not in adata.layers:
        raise InputError(f"counts: adata has no layer '{counts}'; pass 'X' or one of: {', '.join(adata.layers)}")
    if counts == "X" and adata.X is None:
        raise InputError("counts: adata.X is empty (an AnnData of embeddings only); pass the AnnData of the "
                         "cells' raw counts, or a layer that holds them")
    if model is not None and counts is None:
        raise InputError("model: the ESM2-CE baseline is computed from the cells' counts; pass counts "
                         "('X' or a layer of raw counts)")
    matrix = None if counts is None else sp.csr_matrix(adata.X if counts == "X" else adata.layers[counts])
    baselines = {}
    if model is not None:
        from tfx.eval.esm2ce import esm2ce_embeddings

        cells = anndata.AnnData(X=matrix, obs=adata.obs, var=adata.var)  # the counts named, not .raw
        baselines["esm2ce"] = esm2ce_embeddings(_model(model), cells, use_raw=False)
    inputs = {"rep": rep, "counts": counts, "compare": compare, "label": label, "batch": batch, "seed": seed}
    compared = {key: adata.obsm[key] for key in [rep, *compare]} if compare else None
    return evaluate_cells(adata.obsm[rep], adata.obs, opts.label, inputs, batch=opts.batch, counts=matrix,
                          seed=opts.seed, output_dir=output_dir, source=f"adata.obsm['{rep}']", compared=compared,
                          baselines=baselines, maps=opts.maps, cz_benchmarks=opts.cz_benchmarks)
