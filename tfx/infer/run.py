"""`tfx infer`: an h5ad in, an h5ad of embeddings, log-likelihoods and a fine-tuned head's
predictions out, streamed in chunks.

The output is written under a temporary name and renamed when complete. Cell embeddings go to
``obsm["embeddings"]`` chunk by chunk, so memory stays bounded by the chunk size; contextual gene
embeddings use the reference's ``uns`` keys; predictions go to ``obs["<label>_pred"]`` (and
``obs["<label>_prob"]``, ``obsm["<label>_proba"]`` with ``uns["<label>_classes"]`` for classes).

Several processes (``--devices N``, or torchrun / srun ranks across nodes) each compute their share of
fixed chunks of cells into chunk files beside the output (``parts.py``); the first writes the output
from them. A re-run after a crash computes only the chunks missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import torch
from anndata.io import write_elem

from tfx.atomic import atomic_path, h5_stream
from tfx.progress import progress
from tfx.checkpoint import Checkpoint, load_checkpoint
from tfx.checkpoint.surgery import with_species_embeddings
from tfx.data import preprocess
from tfx.data.inputs import CellSources, input_list, open_inputs
from tfx.data.shards import MANIFEST
from tfx.errors import InputError
from tfx.infer.engine import Outputs, run_cells
from tfx.infer.options import OUTPUTS, InferCommand, InferOptions, LoadOptions  # noqa: F401 (tfx.infer.run's API)
from tfx.infer.parts import Rank, launched, load_chunk, missing, parts_dir, plan, run_key, save_chunk
from tfx.options import check_device_count
from tfx.tokenize.batches import BatchSpec
from tfx.vocab import species_for_file

log = logging.getLogger(__name__)


def load_for_inference(path: str | os.PathLike, opts: LoadOptions | None = None, **options) -> Checkpoint:
    """A checkpoint as ``tfx infer`` serves it: the recorded count preprocessing (``clip_counts``
    overrides it, with a warning) and, when given, out-of-distribution species' gene embeddings.
    ``opts`` or ``options``: ``LoadOptions`` (attention, clip_counts, species_embeddings)."""
    opts = opts or LoadOptions(**options)
    ckpt = load_checkpoint(path, attention=opts.attention)
    ckpt = preprocess.apply(ckpt, "tfx infer", f"checkpoint {path}", clip_counts=opts.clip_counts)
    return with_species_embeddings(ckpt, opts.species_embeddings) if opts.species_embeddings else ckpt


def resolve_devices(name: str, count: int = 1) -> list[torch.device]:
    """``count`` devices of kind ``name`` (auto: CUDA when present); ``count`` -1: every GPU."""
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if kind == "cuda":
        available = torch.cuda.device_count()
        if available == 0:
            raise InputError("--device cuda: no CUDA device is available; use --device cpu or auto")
        count = available if count == -1 else count
    count = max(1, count)  # -1 on CPU: one process
    check_device_count(count, kind == "cuda", f"--devices {count}", "--devices {have} or fewer")
    if kind == "cuda":
        return [torch.device("cuda", i) for i in range(count)]
    return [torch.device("cpu")] * count  # several CPU processes split the cores


def open_cells(ckpt: Checkpoint, data, opts: InferOptions) -> CellSources:
    """The cells of the inputs (``tfx.data.inputs``: h5ad files, an in-memory AnnData, shard directories
    or a TileDB-SOMA experiment's query), as ``ckpt`` reads them."""
    reader = open_inputs(data, ckpt.vocab.lookup, species=[species_for_file(name) for name, _ in ckpt.vocab.files],
                         measurement=opts.measurement, obs_filter=opts.obs_filter, gene_col=opts.gene_col,
                         use_raw=opts.use_raw, remove_duplicate_genes=opts.remove_duplicate_genes,
                         aux_vocabs=ckpt.aux_vocabs)
    if reader.n_cells == 0:  # an empty output would look like a finished run
        reader.close()
        what = f"--obs-filter {opts.obs_filter!r} selects no cell" if opts.obs_filter else "it holds no cell"
        raise InputError(f"{reader.path}: {what}; nothing to embed")
    return reader


def _row_results(ckpt: Checkpoint, reader: CellSources, opts: InferOptions, device: torch.device, start: int = 0,
                 stop: int | None = None):
    """(first row, Outputs, cells without genes) for each chunk of rows start..stop."""
    model = ckpt.model.to(device).eval()
    spec = BatchSpec(opts.token_budget, opts.max_cells)
    for chunk in reader.chunks(opts.chunk_size, start, stop, tokenize=preprocess.preprocessing(ckpt)):
        res = run_cells(model, chunk.cells, chunk.aux_ids, ckpt.vocab.pad, emb_type=opts.emb_type, scores=opts.scores,
                        task=ckpt.task.module if opts.predictions else None, batches=spec, device=device,
                        precision=opts.precision, model_type=opts.model_type, layer=opts.layer)
        yield chunk.first, res, sum(len(ids) == 0 for ids, _ in chunk.cells)


def _per_cell(ckpt: Checkpoint, opts: InferOptions) -> dict[str, tuple[int, ...]]:
    """{name: row shape} of the per-cell arrays asked for: Outputs fields, and scores by name."""
    shapes = {name: () for name in opts.scores}
    if opts.embeddings and opts.emb_type == "cell":
        shapes["embeddings"] = (opts.embed_dim(ckpt),)
    if opts.gene_llh:
        shapes["gene_llh_positions"] = (ckpt.model_cfg.seq_len,)
    if opts.predictions:
        task = ckpt.task.module
        shapes["predictions"] = (len(task.classes) if task.categorical else 1,)
    return shapes


def _array(res: Outputs, name: str) -> np.ndarray:
    return res.scores[name] if name in res.scores else getattr(res, name)


def _chunk_arrays(ckpt: Checkpoint, opts: InferOptions, res: Outputs, first: int, empty: int) -> dict:
    """One chunk's results as the arrays of its file."""
    arrays = {name: np.asarray(_array(res, name), np.float32) for name in _per_cell(ckpt, opts)}
    if opts.emb_type == "cge" and opts.embeddings:
        cells, emb, genes = _cge_arrays(_cge_pieces(res, first), opts.embed_dim(ckpt))
        arrays |= {"cge_cells": cells, "cge_emb": emb, "cge_genes": genes}
    return arrays | {"empty": np.array(empty)}


def _write_chunks(ckpt: Checkpoint, data, opts: InferOptions, device: torch.device, chunks: list, parts: Path,
                  key: str) -> None:
    """Compute ``chunks`` and write each one's file as soon as it is done."""
    reader = open_cells(ckpt, data, opts)
    try:
        for start, stop in chunks:
            # one result: a chunk is at most chunk_size rows
            for first, res, empty in _row_results(ckpt, reader, opts, device, start, stop):
                save_chunk(parts, (start, stop), key, _chunk_arrays(ckpt, opts, res, first, empty))
    finally:
        reader.close()


def _worker(index: int, ckpt: Checkpoint, data, opts: InferOptions, devices: list, chunks: list, parts: Path,
            key: str) -> None:
    """One process per device (--devices N): every N-th of the chunks to compute."""
    _write_chunks(ckpt, data, opts, devices[index], chunks[index :: len(devices)], parts, key)


def _read_chunks(ckpt: Checkpoint, parts: Path, chunks: list, opts: InferOptions):
    """(first row, Outputs, cells without genes) of each chunk file, in row order."""
    for start, stop in chunks:
        arrays = load_chunk(parts, (start, stop))
        res = Outputs(cells=stop - start)
        for name in _per_cell(ckpt, opts):
            if name in opts.scores:
                res.scores[name] = arrays[name]
            else:
                setattr(res, name, arrays[name])
        if opts.emb_type == "cge" and opts.embeddings:
            split = np.searchsorted(arrays["cge_cells"], np.arange(start + 1, stop))  # cells may have no gene
            res.cge_embeddings = np.split(arrays["cge_emb"], split)
            res.cge_gene_ids = np.split(arrays["cge_genes"], split)
        yield start, res, int(arrays["empty"])


def _run_key(ckpt: Checkpoint, inputs: list, opts: InferOptions) -> str:
    """What a chunk's numbers depend on: the inputs in order (each file's path, size and time: an
    h5ad's, a shard directory's manifest's; or the SOMA experiment), the checkpoint's files and how it
    is served, and the options (the devices aside)."""
    source = [_identity(item) for item in inputs]
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(ckpt.path).iterdir() if f.is_file())
    served = [str(Path(ckpt.path).resolve()), files, repr(ckpt.data_cfg), len(ckpt.vocab.tokens)]
    options = {name: value for name, value in asdict(opts).items() if name not in ("device", "devices")}
    return run_key(source=source, checkpoint=served, options=options)


def _identity(item) -> list | str:
    if not isinstance(item, Path) or (item.is_dir() and not (item / MANIFEST).is_file()):
        return repr(str(item))  # a SOMA experiment; its measurement and obs filter are options
    file = item / MANIFEST if item.is_dir() else item  # the manifest is written last, after every shard
    return [str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns]


def _resume_line(who: str, done: int, total: int) -> str:
    return f"infer: {who}{done} of {total} chunks already done, computing {total - done}"


def _rank_device(name: str, local: int) -> torch.device:
    """The device of the process ``local`` on its node: its GPU (a node's processes share its GPUs,
    or srun gave each process one), else the CPU."""
    device = resolve_devices(name)[0]
    return torch.device("cuda", local % torch.cuda.device_count()) if device.type == "cuda" else device


def infer_file(ckpt: Checkpoint, data: str | os.PathLike, output: str | os.PathLike, opts: InferOptions) -> dict:
    """Run inference over ``data`` (the inputs ``tfx.data.inputs`` reads) and write ``output``; returns a
    small summary. Under torchrun or srun each rank computes its share of the chunks and rank 0 writes
    ``output`` (``_infer_ranked``)."""
    output = Path(output)
    data = input_list(data)
    if any(isinstance(item, Path) and output.resolve() == item.resolve() for item in data):
        raise InputError(f"{output}: the output would overwrite an input; choose another --output")
    if output.is_dir():
        raise InputError(f"--output {output}: is a directory; name the .h5ad file to write")
    opts = opts.for_checkpoint(ckpt)
    started = time.perf_counter()
    rank = launched()
    if rank.world > 1:
        return _infer_ranked(ckpt, data, output, opts, rank, started)
    devices = resolve_devices(opts.device, opts.devices)
    reader = open_cells(ckpt, data, opts)
    n_cells, obs = reader.n_cells, reader.read_obs()
    _report_overlap(reader, opts.chunk_size)
    if len(devices) == 1:
        try:
            empty = _write_output(ckpt, reader.path, output, opts, obs, _row_results(ckpt, reader, opts, devices[0]))
        finally:
            reader.close()
    else:
        import torch.multiprocessing as mp

        reader.close()  # each device's process opens its own
        chunks, parts, key = plan(n_cells, opts.chunk_size), parts_dir(output), _run_key(ckpt, data, opts)
        todo = missing(parts, chunks, key)
        log.info("%s", _resume_line("", len(chunks) - len(todo), len(chunks)))
        parts.mkdir(exist_ok=True)
        if todo:
            mp.spawn(_worker, args=(ckpt, data, opts, devices, todo, parts, key), nprocs=len(devices), join=True)
        empty = _assemble(ckpt, reader.path, output, opts, obs, chunks, parts, key)
    return {"cells": n_cells, "empty_cells": empty, "seconds": time.perf_counter() - started, "output": str(output)}


RANKS_WAIT = timedelta(days=1)  # ranks wait for the slowest one's share (after a crash, shares differ a lot)


def _infer_ranked(ckpt: Checkpoint, data, output: Path, opts: InferOptions, rank: Rank, started: float) -> dict:
    """One rank of a torchrun or srun launch: every rank reads the input's cells (and checks them),
    computes its share of the chunks not yet done (every world-th), and waits for the others; then rank
    0 assembles the output. A rank that fails makes every rank fail, each with one line."""
    import torch.distributed as dist

    if not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():  # torchrun sets them; plain srun does not
        raise InputError("under srun without torchrun, set MASTER_ADDR (the first node's address) and MASTER_PORT "
                         "for the ranks to meet (docs/recipes.md)")
    # gloo on GPUs too: the ranks exchange only a few integers, once
    dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world, timeout=RANKS_WAIT)
    try:
        failure, done, computed = None, 0, 0
        try:
            if opts.devices != 1:
                raise InputError(f"--devices {opts.devices}: under torchrun or srun each process serves one device "
                                 "(LOCAL_RANK's); drop --devices and launch one process per device")
            device = _rank_device(opts.device, rank.local)
            reader = open_cells(ckpt, data, opts)
            n_cells, name = reader.n_cells, reader.path
            obs = reader.read_obs() if rank.rank == 0 else None  # only rank 0 writes the output
            if rank.rank == 0:
                _report_overlap(reader, opts.chunk_size)
            reader.close()
            chunks, parts, key = plan(n_cells, opts.chunk_size), parts_dir(output), _run_key(ckpt, data, opts)
            mine = chunks[rank.rank :: rank.world]
            todo = missing(parts, mine, key)
            log.info("%s", _resume_line(f"rank {rank.rank} of {rank.world}: ", len(mine) - len(todo), len(mine)))
            parts.mkdir(exist_ok=True)
            _write_chunks(ckpt, data, opts, device, todo, parts, key)
            done, computed = len(mine) - len(todo), len(todo)
        except Exception as err:  # told to every rank, so none waits for a rank that has stopped
            failure = err
        done, computed = _all_ranks(failure, done, computed)
        if rank.rank > 0:
            return {"cells": n_cells, "empty_cells": 0, "seconds": time.perf_counter() - started, "output": None}
        log.info("%s", _resume_line("all ranks: ", done, done + computed))
        empty = _assemble(ckpt, name, output, opts, obs, chunks, parts, key)
        return {"cells": n_cells, "empty_cells": empty, "seconds": time.perf_counter() - started, "output": str(output)}
    finally:
        dist.destroy_process_group()


def _all_ranks(failure: Exception | None, *counts: int) -> list[int]:
    """Every rank's ``counts`` summed, once every rank is here; when a rank failed, every rank raises
    (its own error, or one saying another rank failed)."""
    import torch.distributed as dist

    total = torch.tensor([failure is not None, *counts], dtype=torch.int64)
    dist.all_reduce(total)
    if failure is not None:
        raise failure
    if total[0]:
        raise InputError(f"{int(total[0])} other rank(s) failed (their logs say why); fix that and run the same "
                         "command again: finished chunks are kept")
    return total[1:].tolist()


def _assemble(ckpt: Checkpoint, name: str, output: Path, opts: InferOptions, obs: pd.DataFrame, chunks: list,
              parts: Path, key: str) -> int:
    """Write ``output`` from the chunk files, then remove them; returns the cells without genes."""
    lost = missing(parts, chunks, key)
    if lost:
        raise InputError(f"{parts}: {len(lost)} of {len(chunks)} chunks are missing after every process ended "
                         f"(the first holds rows {lost[0][0]}..{lost[0][1]}); the output's directory must be on a "
                         "file system every node sees")
    empty = _write_output(ckpt, name, output, opts, obs, _read_chunks(ckpt, parts, chunks, opts))
    shutil.rmtree(parts)
    return empty


def _write_output(ckpt: Checkpoint, name: str, output: Path, opts: InferOptions, obs: pd.DataFrame, results) -> int:
    """Write ``output`` (atomically) from ``results``, (first row, Outputs, cells without genes) in row
    order; returns the cells without genes."""
    n_cells = len(obs)
    scores = {name: np.full(n_cells, np.nan, dtype=np.float32) for name in opts.scores}
    shapes = _per_cell(ckpt, opts)
    pred = np.full((n_cells, *shapes["predictions"]), np.nan, dtype=np.float32) if opts.predictions else None
    cge = []  # (cell index, its genes' embeddings, their ids)
    empty = non_finite = 0
    started = time.perf_counter()
    with atomic_path(output) as tmp, h5_stream(tmp) as f:
        write_elem(f, "obsm", {})
        emb_ds = gene_llh_ds = None
        if opts.embeddings and opts.emb_type == "cell":  # streamed: memory stays bounded by the chunk size
            emb_ds = _obsm_dataset(f, "embeddings", (n_cells, opts.embed_dim(ckpt)))
        if opts.gene_llh:  # the reference's layout: cells x seq_len, 0 past each cell's genes
            gene_llh_ds = _obsm_dataset(f, "gene_llh", (n_cells, ckpt.model_cfg.seq_len))
        bar = progress(total=n_cells, unit="cell", desc="infer")
        for start, res, n_empty in results:
            n = res.cells
            empty += n_empty
            non_finite += _non_finite_cells(res, n_empty)
            if emb_ds is not None:
                emb_ds[start : start + n] = res.embeddings
            elif opts.embeddings and opts.emb_type == "cge":
                cge += _cge_pieces(res, start)
            if gene_llh_ds is not None:
                gene_llh_ds[start : start + n] = res.gene_llh_positions
            for name, values in scores.items():
                values[start : start + n] = res.scores[name]
            if pred is not None:
                pred[start : start + n] = res.predictions
            bar.update(n)
            # refresh=False: shown with the bar's next line, not one log line per chunk
            bar.set_postfix(cells_per_s=f"{bar.n / (time.perf_counter() - started):.0f}", refresh=False)
        bar.close()
        _warn_cells(name, empty, output, non_finite, n_cells)
        for name, values in scores.items():
            obs[name] = values
        uns = _write_predictions(f, obs, ckpt.task, pred) if pred is not None else {}
        if opts.embeddings and opts.emb_type == "cge":
            uns |= _cge_uns(ckpt, opts, cge)
        _write_anndata_skeleton(f, obs, uns)
    return empty


def _warn_cells(name: str, empty: int, output, non_finite: int, n_cells: int) -> None:
    if empty:
        log.warning("%s: %d of %d cells have no expressed gene in the vocabulary; kept (their llh and "
                    "gene_llh are NaN)", name, empty, n_cells)
    if non_finite:
        log.warning("%s: %d of %d cells have NaN or infinite outputs; the checkpoint's weights may be broken "
                    "(or a half --precision overflowed: try --precision 32)", output, non_finite, n_cells)


def infer_memory(ckpt: Checkpoint, adata, opts: InferOptions) -> tuple[dict[str, np.ndarray], dict]:
    """``infer_file``'s engine over an in-memory AnnData, on one device: ({name: per-cell array} of
    ``_per_cell``'s names, the reference's cge ``uns`` entries when asked)."""
    _, arrays, uns = infer_cells(ckpt, adata, opts)
    return arrays, uns


def infer_cells(ckpt: Checkpoint, data, opts: InferOptions) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    """``infer_memory`` over any inputs ``open_cells`` reads (an AnnData, h5ad files, shard directories,
    a SOMA query), with the obs of the cells read."""
    opts = opts.for_checkpoint(ckpt)
    device = resolve_devices(opts.device)[0]
    reader = open_cells(ckpt, data, opts)
    try:
        _report_overlap(reader, opts.chunk_size)
        arrays = {name: np.full((reader.n_cells, *shape), np.nan, np.float32)
                  for name, shape in _per_cell(ckpt, opts).items()}
        cge = []
        empty = non_finite = 0
        for first, res, n_empty in _row_results(ckpt, reader, opts, device):
            empty += n_empty
            non_finite += _non_finite_cells(res, n_empty)
            for name, arr in arrays.items():
                arr[first : first + res.cells] = _array(res, name)
            cge += _cge_pieces(res, first)
        _warn_cells(reader.path, empty, reader.path, non_finite, reader.n_cells)
        uns = _cge_uns(ckpt, opts, cge) if opts.embeddings and opts.emb_type == "cge" else {}
        return reader.read_obs(), arrays, uns
    finally:
        reader.close()


def _cge_pieces(res: Outputs, first: int) -> list:
    """(cell index, its genes' embeddings, their ids) of each cell of a batch starting at row ``first``."""
    return [(first + i, e, g) for i, (e, g) in enumerate(zip(res.cge_embeddings, res.cge_gene_ids))]


def _cge_arrays(pieces: list, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell pieces as one row per gene: (cell index, embedding, gene id)."""
    return (np.concatenate([np.full(len(g), cell, dtype=np.int64) for cell, _, g in pieces] or [np.zeros(0, np.int64)]),
            np.concatenate([e for _, e, _ in pieces] or [np.zeros((0, dim), np.float32)]),
            np.concatenate([g for _, _, g in pieces] or [np.zeros(0, np.int64)]))


def _cge_uns(ckpt: Checkpoint, opts: InferOptions, pieces: list) -> dict:
    """The reference's uns entries of contextual gene embeddings, from per-cell pieces."""
    cells, emb, genes = _cge_arrays(pieces, opts.embed_dim(ckpt))
    return {"cge_embeddings": emb, "cge_cell_indices": cells,
            "cge_gene_names": np.array(ckpt.vocab.tokens, dtype=object)[genes].astype(str)}


def _write_predictions(f: h5py.File, obs: pd.DataFrame, task, pred: np.ndarray) -> dict:
    """obs["<label>_pred"] (and, for classes, obs["<label>_prob"], obsm["<label>_proba"]); returns
    the uns entry naming the columns of the probabilities."""
    label = task.label_key
    if not task.module.categorical:
        obs[f"{label}_pred"] = pred[:, 0]
        return {}
    classes = np.asarray(task.module.classes, dtype=object)
    obs[f"{label}_pred"] = pd.Categorical(classes[pred.argmax(1)], categories=list(classes))
    obs[f"{label}_prob"] = pred.max(1)
    _obsm_dataset(f, f"{label}_proba", pred.shape)[:] = pred
    return {f"{label}_classes": classes.astype(str)}


OVERLAP_WARN = 0.5  # below this share of genes or counts in the vocabulary, infer warns


def _report_overlap(reader: CellSources, cells: int) -> None:
    """How much of each input the model sees: genes in its vocabulary and their share of the counts
    (over the input's first ``cells`` cells; a shard directory's first shard); a warning when either
    is below OVERLAP_WARN."""
    for path, column_ids, sample in reader.samples(cells):
        matched = column_ids >= 0
        total = float(sample.sum())
        counts = float(sample[:, np.flatnonzero(matched)].sum()) / total if total else 0.0
        text = (f"{path}: {int(matched.sum())} of {len(matched)} genes ({matched.mean():.0%}) are in the model's "
                f"vocabulary, holding {counts:.0%} of the counts (first {sample.shape[0]} cells)")
        if min(matched.mean(), counts) < OVERLAP_WARN:
            log.warning("%s; check --gene-col and the species (--species-embedding)", text)
        else:
            log.info("%s", text)


def _non_finite_cells(res: Outputs, n_empty: int) -> int:
    """Cells whose embeddings or llh hold NaN or inf (a cell without a vocabulary gene has a NaN llh by design)."""
    if res.embeddings is not None:
        bad = ~np.isfinite(np.asarray(res.embeddings)).all(axis=1)
    else:
        bad = np.array([not np.isfinite(e).all() for e in res.cge_embeddings], dtype=bool)
    llh = res.scores.get("llh")
    llh_bad = 0 if llh is None else int((~np.isfinite(np.asarray(llh))).sum()) - n_empty
    return max(int(bad.sum()), llh_bad)


def _obsm_dataset(f: h5py.File, name: str, shape: tuple[int, int]) -> h5py.Dataset:
    ds = f["obsm"].create_dataset(name, shape=shape, dtype="f4")
    ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    return ds


def _write_anndata_skeleton(f: h5py.File, obs: pd.DataFrame, uns: dict) -> None:
    """Everything of an h5ad but the streamed obsm arrays, in anndata's own encoding. The input's
    nullable-string obs columns are written as they were read (an input that has them needs anndata
    >= 0.11 already)."""
    with warnings.catch_warnings(), anndata.settings.override(allow_write_nullable_strings=True):
        warnings.simplefilter("ignore")
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index([], dtype=str)))
        write_elem(f, "uns", uns)
        for key in ("varm", "obsp", "varp", "layers"):
            write_elem(f, key, {})
    f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
