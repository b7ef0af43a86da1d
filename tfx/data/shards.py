"""h5ad files or TileDB-SOMA queries -> WebDataset tar shards that serve any vocabulary, model or species mix.

    write_shards(inputs, species, output_dir, *, cells_per_shard=10_000, obs_keys=(), processes=None,
                 gene_col="ensembl_id", use_raw=None, remove_duplicate_genes=False,
                 measurement="RNA", obs_filter=None) -> summary dict

``output_dir`` may be an object store (``s3://bucket/prefix``, any fsspec URL; see ``tfx.data.store``).

Shards hold gene identifiers and raw counts, never vocabulary indices. Each tar opens with a header
sample ``__shard__.json`` (format, species, source, row range, cell count and the source's gene table),
then one sample per cell: ``<key>.expr.npy`` (a structured array of gene positions in that table and
counts) and ``<key>.json`` (cell name, species, dataset and the chosen obs columns). The output
directory also holds ``manifest.json`` (written last: a directory with a manifest is complete) and
``.progress/`` (the run's plan and one record per finished shard, for resuming). The format is
documented in docs/data-format.md.

Every shard is one row range of one input file, so the plan depends only on the inputs and
``cells_per_shard``: shards are written in parallel, each to a temporary name then renamed, and a
re-run after a kill writes only the missing ones, byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

import tfx.vocab.species  # noqa: F401  (registers the built-in species)
from tfx.atomic import exclusive
from tfx.progress import progress
from tfx.data.anndata import CellReader
from tfx.data.soma import SomaSource
from tfx.data.sources import is_soma, open_reader, soma_source
from tfx.data.store import Location, is_url, open_url
from tfx.errors import InputError
from tfx.outputs import check_writable
from tfx.registry import SPECIES

log = logging.getLogger(__name__)

FORMAT, VERSION = "tfx-shards", 1
HEADER_KEY = "__shard__"
MANIFEST = "manifest.json"
PROGRESS = ".progress"
DEFAULT_OBS_KEYS = ("cell_type", "assay", "tissue")
CHUNK_VALUES = 1 << 23  # dense values read at once (32 MiB of float32): bounds a writer's memory
MAX_LISTED_VALUES = 1000  # the manifest lists an obs key's values up to this many (more: ids, no label)


class ShardError(InputError):
    """A shard that cannot be read: missing, corrupt or truncated."""


# ---- the per-cell format, shared with the loader -------------------------------------------------


def cell_key(row: int, name: str) -> str:
    """A tar-safe, unique key: the row in the source file, then the cell name with anything but
    letters, digits, '_' and '-' replaced (a '.' would split the key, a '/' make a directory)."""
    return f"r{row:09d}_{re.sub(r'[^A-Za-z0-9_-]', '_', str(name))[:64]}"


def encode_expr(genes: np.ndarray, counts: np.ndarray, table_size: int) -> bytes:
    """Gene positions and counts as one structured npy array, in the smallest exact dtypes."""
    integral = counts.size == 0 or (counts.max() < 65536 and np.array_equal(counts, np.round(counts)))
    dtype = [("gene", "<u2" if table_size <= 65536 else "<u4"), ("count", "<u2" if integral else "<f4")]
    arr = np.empty(len(genes), dtype=dtype)
    arr["gene"], arr["count"] = genes, counts
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_expr(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(gene positions in the shard's gene table, float32 counts)."""
    end = 10 + int.from_bytes(data[8:10], "little")  # npy 1.0: magic, version, header length, header
    dtype, shape = _npy_header(bytes(data[:end]))
    arr = np.frombuffer(data, dtype=dtype, count=shape[0], offset=end)
    return arr["gene"], arr["count"].astype(np.float32)


@lru_cache(maxsize=16384)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple]:
    """Parsing an npy header costs far more than reading the cell; headers repeat (one per dtype and
    length), so each is parsed once."""
    fp = io.BytesIO(header)
    if np.lib.format.read_magic(fp) != (1, 0):
        raise ValueError("expr.npy is not an npy 1.0 array")
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
    if fortran_order or len(shape) != 1 or dtype.names != ("gene", "count"):
        raise ValueError(f"expr.npy holds {dtype} {shape}, not a 1-D (gene, count) array")
    return dtype, shape


def read_shard(url: str) -> Iterator:
    """Yield a shard's header, then (gene positions, counts, metadata) per cell.

    Raises ShardError naming the shard when it cannot be opened or decoded, or when it ends before
    the cell count of its header: tar readers end silently at a truncation or a damaged header.
    """
    try:
        stream = open_url(url) if is_url(url) else wds.gopen(url)
    except Exception as err:
        raise ShardError(f"{url}: cannot open ({type(err).__name__}: {err})") from err
    try:
        samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}], eof_value=None))
        first = next(samples, None)
        if first is None or first["__key__"] != HEADER_KEY or "json" not in first:
            raise ShardError(f"{url}: no {HEADER_KEY}.json header first; not a tfx shard")
        header = json.loads(first["json"])
        if (header.get("format"), header.get("version")) != (FORMAT, VERSION):
            raise ShardError(f"{url}: shard format {header.get('format')} v{header.get('version')}; "
                             f"this tfx reads {FORMAT} v{VERSION}, re-write it with tfx shard")
        yield header
        read = 0
        for sample in samples:
            genes, counts = decode_expr(sample["expr.npy"])
            meta = json.loads(sample["json"])
            read += 1
            yield genes, counts, meta
        if read != header["cells"]:
            raise ShardError(f"{url}: truncated or damaged, {read} of the {header['cells']} cells its header announces")
        stream.close()  # a pipe: URL reports its command's failure here
    except GeneratorExit:  # the reader stopped early; a pipe's command may die of SIGPIPE
        with contextlib.suppress(Exception):
            stream.close()
        raise
    except Exception as err:
        failure = err
        try:
            stream.close()  # a failed pipe: command explains more than what it left unread
        except Exception as close_err:
            failure = close_err
        if isinstance(failure, ShardError):
            raise
        raise ShardError(f"{url}: unreadable or corrupt ({type(failure).__name__}: {failure})") from failure


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _json_value(v):
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return v if isinstance(v, (str, int, float, bool)) else str(v)


# ---- writing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Options:
    output: str
    species: str
    obs_keys: tuple[str, ...]
    gene_col: str
    use_raw: bool | None
    remove_duplicate_genes: bool
    measurement: str = "RNA"
    obs_filter: str | None = None


@dataclass(frozen=True)
class _Task:
    name: str  # shard file name
    path: str | SomaSource  # source h5ad or SOMA experiment
    source: str  # its file name
    dataset: str  # its stem
    start: int
    stop: int


def _reader(path, opts: _Options) -> CellReader:
    return open_reader(path, None, measurement=opts.measurement, obs_filter=opts.obs_filter, gene_col=opts.gene_col,
                       use_raw=opts.use_raw, remove_duplicate_genes=opts.remove_duplicate_genes)


_open_reader: tuple[tuple, CellReader] | None = None  # per process: shards in a row mostly share a file


def _shared_reader(path, opts: _Options) -> CellReader:
    """Opening a file reads its var (a SOMA query: also the selected cells' obs), so a writer keeps its
    last file open."""
    global _open_reader
    if _open_reader is None or _open_reader[0] != (path, opts):
        _close_shared_reader()
        _open_reader = ((path, opts), _reader(path, opts))
    return _open_reader[1]


def _close_shared_reader() -> None:
    global _open_reader
    if _open_reader is not None:
        _open_reader[1].close()
        _open_reader = None


def _check_species(species: str) -> None:
    try:
        SPECIES.get(species)
    except KeyError:
        known = ", ".join(SPECIES.names()) or "none"
        raise InputError(f"--species {species}: unknown species (registered: {known}); "
                         "pass one of these or register the species first") from None


def _plan(inputs, opts: _Options, cells_per_shard: int) -> tuple[dict, list[_Task]]:
    """Validate every input (nothing is written before all pass) and cut them into shards."""
    files, tasks = [], []
    for given in inputs:
        soma = is_soma(given)
        path = soma_source(given, opts.measurement, opts.obs_filter) if soma else Path(given)
        reader = _reader(path, opts)
        try:
            n_cells, n_genes, columns = reader.n_cells, len(reader.genes), set(reader.obs_columns)
            selected = hashlib.sha256(reader.joinids.tobytes()).hexdigest() if soma else None
        finally:
            reader.close()
        name = path.name
        if n_cells == 0:
            what = f"the filter {opts.obs_filter!r} selects no cell of it" if soma and opts.obs_filter else "it holds no cell"
            raise InputError(f"{path.uri if soma else path}: {what}; drop it from --input")
        missing = [k for k in opts.obs_keys if k not in columns]
        if missing:
            cols = ", ".join(sorted(columns)[:15]) or "none"
            raise InputError(f"{path.uri if soma else path}: obs has no column {missing[0]} (columns: {cols}); "
                             "fix --obs-keys")
        if any(f["name"] == name for f in files):
            raise InputError(f"{given}: another input has the same name; rename one (it names the dataset)")
        if soma:  # an experiment's identity: where it is and which cells the query selected
            files.append({"name": name, "uri": path.uri, "measurement": path.measurement,
                          "obs_filter": path.obs_filter, "selected_sha256": selected, "cells": n_cells,
                          "genes": n_genes})
        else:
            with open(path, "rb") as f:  # by content: an input edited in place, even to the same size, is another input
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            files.append({"name": name, "path": str(path.resolve()), "bytes": path.stat().st_size,
                          "sha256": digest, "cells": n_cells, "genes": n_genes})
        for start in range(0, n_cells, cells_per_shard):
            tasks.append(_Task(f"shard-{len(tasks):06d}.tar", path if soma else str(path), name, Path(name).stem,
                               start, min(start + cells_per_shard, n_cells)))
    plan = {"format": FORMAT, "version": VERSION, "species": opts.species, "cells_per_shard": cells_per_shard,
            "obs_keys": list(opts.obs_keys), "gene_col": opts.gene_col, "use_raw": opts.use_raw,
            "remove_duplicate_genes": opts.remove_duplicate_genes, "inputs": files}
    return plan, tasks


def _write_shard(opts: _Options, task: _Task) -> dict:
    """Write one shard atomically; return its manifest record (also saved under .progress/)."""
    out = Location(opts.output)
    reader = _shared_reader(task.path, opts)
    keys = [k for k in dict.fromkeys((*DEFAULT_OBS_KEYS, *opts.obs_keys)) if k in reader.obs_columns]
    obs = reader.read_obs(keys, task.start, task.stop)  # this shard's names and keys only
    names = obs.index
    table = [str(g) for g in reader.genes]
    expressed = np.zeros(len(table), dtype=bool)
    nonzero = 0
    header = {"format": FORMAT, "version": VERSION, "species": opts.species, "source": task.source,
              "dataset": task.dataset, "rows": [task.start, task.stop], "cells": task.stop - task.start,
              "genes": table}
    chunk = max(16, min(4096, CHUNK_VALUES // len(table)))
    seen = {k: set() for k in keys}
    unset = dict.fromkeys(keys, 0)  # cells without a value, per key
    with out.writing(task.name) as tmp:
        with wds.TarWriter(str(tmp), encoder=False, mtime=0) as tar:  # fixed mtime: identical re-runs
            tar.write({"__key__": HEADER_KEY, "json": _dumps(header)})
            for first, cells in reader.iter_chunks(chunk, task.start, task.stop):
                rows = obs.iloc[first - task.start : first - task.start + len(cells)]
                values = [[_json_value(v) for v in rows[k].tolist()] for k in keys]
                for k, col in zip(keys, values):
                    unset[k] += col.count(None)
                    if seen[k] is not None:
                        seen[k].update(str(v) for v in col if v is not None)
                        seen[k] = seen[k] if len(seen[k]) <= MAX_LISTED_VALUES else None
                for i, (genes, counts) in enumerate(cells):
                    row = first + i
                    name = names[row - task.start]
                    meta = {"id": str(name), "species": opts.species, "dataset": task.dataset,
                            "obs": {k: col[i] for k, col in zip(keys, values)}}
                    tar.write({"__key__": cell_key(row, name), "json": _dumps(meta),
                               "expr.npy": encode_expr(genes, counts, len(table))})
                    expressed[genes] = True
                    nonzero += len(genes)
        size = tmp.stat().st_size
    record = {"name": task.name, "source": task.source, "dataset": task.dataset, "rows": [task.start, task.stop],
              "cells": task.stop - task.start, "genes": int(expressed.sum()), "gene_table": len(table),
              "nonzero": nonzero, "bytes": size,
              "obs_values": {k: None if v is None else sorted(v) for k, v in seen.items()}, "obs_missing": unset}
    out.write_text(f"{PROGRESS}/{task.name}.json", json.dumps(record, sort_keys=True))
    return record


def _worker_init(parent: int) -> None:
    """A writer dies with tfx shard, even one killed with -9 (Linux's parent-death signal), and
    leaves Ctrl-C to it (the shards being written finish, a re-run writes the rest)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _remove_stale_temporaries(out: Location) -> None:
    """Temporary files of a killed run (atomic_path names them '.<name>.tmp-<pid>'); an upload to an
    object store leaves none there (an object appears whole or not at all)."""
    if out.remote:
        return
    path = out.path
    for tmp in [*path.glob(".shard-*.tmp-*"), *path.glob(f".{MANIFEST}.tmp-*"), *(path / PROGRESS).glob(".*.tmp-*")]:
        tmp.unlink(missing_ok=True)


def _identity(f: dict):
    return f.get("sha256") or f.get("selected_sha256")


def _prepare_output(out: Location, plan: dict) -> None:
    plan_file = f"{PROGRESS}/plan.json"
    if out.exists(plan_file):
        old = json.loads(out.read_text(plan_file))
        if old != plan:
            before = {f["name"]: _identity(f) for f in old.get("inputs", [])}
            edited = [f["name"] for f in plan["inputs"] if f["name"] in before and before[f["name"]] != _identity(f)]
            if edited:
                raise InputError(f"{out}: holds shards of {edited[0]} as it was before it changed (its content "
                                 "or selected cells differ); choose an empty --output or delete this directory")
            raise InputError(f"{out}: holds shards of another run (other inputs or options); "
                             "choose an empty --output or delete this directory")
        return
    if not out.is_empty():
        raise InputError(f"{out}: exists and is not an empty directory from tfx shard; choose another --output")
    out.write_text(plan_file, json.dumps(plan, indent=1, sort_keys=True))


def write_shards(inputs, species: str, output_dir: str | os.PathLike, *, cells_per_shard: int = 10_000,
                 obs_keys=(), processes: int | None = None, gene_col: str = "ensembl_id",
                 use_raw: bool | None = None, remove_duplicate_genes: bool = False, measurement: str = "RNA",
                 obs_filter: str | None = None) -> dict:
    """Write (or finish writing) the shards of ``inputs`` into ``output_dir``; return a summary.

    ``inputs``: h5ad files, TileDB-SOMA experiments (a directory, a URI or a ``SomaSource``; their
    ``measurement``'s cells that ``obs_filter`` selects), or a mix. ``output_dir``: a directory or
    an fsspec URL (``s3://bucket/prefix``). ``obs_keys`` are stored on top of cell_type, assay and
    tissue (those when present); every key named must exist in every input. ``processes`` defaults
    to one per CPU, at most one per shard.
    """
    started = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike, SomaSource)) else list(inputs)
    if not inputs:
        raise InputError("no --input given; name one or more h5ad files or TileDB-SOMA experiments")
    if cells_per_shard < 1:
        raise InputError(f"--cells-per-shard {cells_per_shard}: must be at least 1")
    _check_species(species)
    out = Location(output_dir)
    if not out.remote:
        check_writable(out.path, f"--output {output_dir}")
    opts = _Options(str(out), species, tuple(obs_keys), gene_col, use_raw, remove_duplicate_genes, measurement,
                    obs_filter)
    plan, tasks = _plan(inputs, opts, cells_per_shard)
    existed, fresh = out.remote or out.path.exists(), not out.exists(f"{PROGRESS}/plan.json")
    _prepare_output(out, plan)
    # an object store has no lock: two runs writing one prefix write the same bytes, the manifest last
    lock = contextlib.nullcontext() if out.remote else exclusive(out.path / PROGRESS, "shard directory")
    try:
        with lock:
            return _write_planned(out, opts, plan, tasks, processes, started)
    except InputError:  # a bad cell: the input must change, and with it the plan; a fresh --output is left as it was
        if fresh and not out.remote:
            shutil.rmtree(out.path)
            if existed:
                out.path.mkdir()
        raise


def _write_planned(out: Location, opts: _Options, plan: dict, tasks: list, processes: int | None,
                   started: float) -> dict:
    _remove_stale_temporaries(out)

    records = {}
    for task in tasks:  # a shard is done once its record exists (written after the shard's rename)
        record_file = f"{PROGRESS}/{task.name}.json"
        if out.exists(record_file) and out.exists(task.name):
            records[task.name] = json.loads(out.read_text(record_file))
    todo = [t for t in tasks if t.name not in records]
    if records:
        log.info("%s: %d of %d shards already written; writing the other %d", out, len(records), len(tasks), len(todo))
    processes = max(1, min(processes or os.cpu_count() or 1, len(todo)))
    bar = progress(total=len(tasks), initial=len(records), unit="shard", desc="shard")
    try:
        write = partial(_write_shard, opts)
        if processes == 1:
            for record in map(write, todo):
                records[record["name"]] = record
                bar.update()
        else:
            # fork: workers inherit the imports and open their own readers (no HDF5 file is open here);
            # TileDB's threads do not survive a fork, so SOMA inputs get fresh (spawned) workers;
            # an executor, unlike a Pool, fails instead of hanging when a worker dies (out of memory)
            start = "spawn" if any(isinstance(t.path, SomaSource) for t in todo) else "fork"
            with ProcessPoolExecutor(processes, mp_context=mp.get_context(start), initializer=_worker_init,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(write, task) for task in todo]
                try:
                    for future in as_completed(futures):
                        record = future.result()
                        records[record["name"]] = record
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # shards being written finish; the rest wait for a re-run
                    raise
    finally:
        bar.close()
        _close_shared_reader()
        _remove_stale_temporaries(out)  # a killed worker cannot clean up

    manifest = {**plan, "cells": sum(r["cells"] for r in records.values()),
                "obs_values": _obs_values(records.values()), "obs_missing": _obs_missing(records.values()),
                "shards": [records[t.name] for t in tasks]}
    out.write_text(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return {"output": str(out), "manifest": out.child(MANIFEST), "shards": len(tasks), "written": len(todo),
            "cells": manifest["cells"], "seconds": time.perf_counter() - started}


def _obs_missing(records) -> dict[str, int | None]:
    """Each stored obs key's count of cells without a value; None where a shard's record (written
    before this count) lacks it."""
    total: dict[str, int | None] = {}
    for record in records:
        counts = record.get("obs_missing", {})
        for key in record.get("obs_values", {}):
            have, n = total.get(key, 0), counts.get(key)
            total[key] = None if have is None or n is None else have + n
    return total


def _obs_values(records) -> dict[str, list[str] | None]:
    """Each stored obs key's distinct values over the shards (a fine-tuning run's classes); None
    for a key with more than MAX_LISTED_VALUES, or that a shard written before this record lacks."""
    union: dict[str, set | None] = {}
    for record in records:
        for key, values in record.get("obs_values", {}).items():
            have = union.get(key, set())
            union[key] = None if values is None or have is None else have | set(values)
    return {k: None if v is None or len(v) > MAX_LISTED_VALUES else sorted(v) for k, v in union.items()}
