"""The cells of `tfx infer`'s inputs (and ``tfx.embed``'s), whatever they are, as one sequence.

    cells = open_inputs(["a.h5ad", "b.h5ad"], vocab.lookup, aux_vocabs=...)  # or "shards/", "s3://...", an AnnData
    cells.n_cells, cells.read_obs()                                          # every input's, in order
    for chunk in cells.chunks(4096, start, stop, tokenize=...): ...          # rows numbered across the inputs

The inputs are one h5ad file (or an in-memory AnnData), several h5ad files, a directory of ``tfx
shard`` shards (its ``manifest.json``), several of those, or one TileDB-SOMA experiment's query
(given alone). Each input is read on its own: an h5ad's genes are mapped through the gene index by
its own var, a shard's through its own gene table; rows count on from one input to the next, and a
chunk of rows may span two inputs.

The output's obs is the inputs' obs one after another, obs names as given. When several inputs are
given and obs names repeat, obs gets a column ``source_file`` (the input each cell came from), so
(source_file, name) tells cells apart.

Shards hold gene identifiers and raw counts, the cells' names and the obs columns ``tfx shard``
kept (cell_type, assay, tissue and its ``--obs-keys``): a cell read from shards is the cell read from
the h5ad they were made from, and its obs is those columns. Their gene column, ``.raw`` choice and
duplicate handling were fixed by ``tfx shard`` (the manifest records them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tfx.data.anndata import Chunk
from tfx.data.loader import resolve_urls
from tfx.data.shards import MANIFEST, PROGRESS, ShardError, read_shard
from tfx.data.soma import SomaSource
from tfx.data.sources import URL, open_reader
from tfx.errors import InputError
from tfx.vocab.aux import aux_token_ids

log = logging.getLogger(__name__)
SOURCE_COLUMN = "source_file"


def input_list(data) -> list:
    """``data`` as a list of inputs: an AnnData, a ``SomaSource`` or a URI as given, anything else a
    ``Path``. Refuses in one line an empty list, a SOMA experiment beside other inputs, and a shard
    directory that ``tfx shard`` did not finish."""
    items = [data] if isinstance(data, (anndata.AnnData, SomaSource, str, os.PathLike)) else list(data)
    if not items or any(isinstance(d, (str, os.PathLike)) and not os.fspath(d) for d in items):  # '' is the cwd
        raise InputError("--data: name an h5ad file, several, a tfx shard directory or a TileDB-SOMA experiment")
    for d in items:
        if not isinstance(d, (anndata.AnnData, SomaSource, str, os.PathLike)):
            raise InputError(f"--data: {d!r} is a {type(d).__name__}; name h5ad files, tfx shard directories or "
                             "a TileDB-SOMA experiment")
    inputs = [d if isinstance(d, (anndata.AnnData, SomaSource)) or isinstance(d, str) and URL.match(d)
              and not d.startswith("file://") else Path(d) for d in items]
    for item in inputs:
        if isinstance(item, Path) and item.is_dir() and not (item / MANIFEST).exists() and (
                (item / PROGRESS).exists() or any(item.glob("*.tar"))):
            raise InputError(f"{item}: a tfx shard directory without {MANIFEST} (tfx shard has not finished it); "
                             "run the same tfx shard command again to complete it")
    soma = [item for item in inputs if _is_soma(item)]
    if soma and len(inputs) > 1:
        raise InputError(f"--data: {soma[0]} is read as a TileDB-SOMA experiment (a directory without a tfx shard "
                         f"{MANIFEST}, or a URI), which is given alone; name h5ad files and tfx shard directories, "
                         "or the experiment alone")
    return inputs


def _is_soma(item) -> bool:
    return isinstance(item, (str, SomaSource)) or isinstance(item, Path) and item.is_dir() \
        and not (item / MANIFEST).exists()


def open_inputs(data, gene_index=None, *, species: list[str] | None = None, measurement: str = "RNA",
                obs_filter: str | None = None, **options) -> CellSources:
    """The cells of ``data`` (see the module docstring), every input opened and checked before any is
    read. ``options`` are CellReader's; ``species``: those the gene index serves (a shard directory of
    another species is refused)."""
    readers = []
    try:
        for item in input_list(data):
            if isinstance(item, Path) and (item / MANIFEST).is_file():
                if obs_filter:
                    raise InputError(f"--obs-filter selects cells of a TileDB-SOMA experiment; {item} is a tfx "
                                     "shard directory (every cell of it is read)")
                readers.append(ShardDirReader(item, gene_index, options.get("aux_vocabs"), species))
            else:
                readers.append(open_reader(item, gene_index, measurement=measurement, obs_filter=obs_filter,
                                           **options))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return CellSources(readers)


class CellSources:
    """Readers one after another, as one reader: ``n_cells``, ``read_obs``, ``chunks`` over rows
    numbered across them, ``samples`` of each and ``close``."""

    def __init__(self, readers: list):
        self.readers = readers
        self.starts = np.cumsum([0, *(r.n_cells for r in readers)])
        self.n_cells = int(self.starts[-1])
        self.path = str(readers[0].path) if len(readers) == 1 else \
            f"{readers[0].path} and {len(readers) - 1} other input{'s' * (len(readers) > 2)}"

    def read_obs(self) -> pd.DataFrame:
        """Every input's obs, in order (read from the inputs at each call)."""
        if len(self.readers) == 1:
            return self.readers[0].read_obs()
        obs = pd.concat([r.read_obs() for r in self.readers])
        if not obs.index.is_unique:
            if SOURCE_COLUMN in obs.columns:
                raise InputError(f"--data: obs names repeat across the inputs, and obs already has a column "
                                 f"'{SOURCE_COLUMN}' where tfx names each cell's input; rename that column or "
                                 "make the obs names unique")
            names = [str(r.path) for r in self.readers]
            obs[SOURCE_COLUMN] = pd.Categorical(np.repeat(names, [r.n_cells for r in self.readers]),
                                                categories=list(dict.fromkeys(names)))
        return obs

    def chunks(self, chunk_size: int = 4096, start: int = 0, stop: int | None = None, tokenize=None):
        """Rows start..stop in chunks of ``chunk_size`` (a chunk may span two inputs), as CellReader's."""
        stop = self.n_cells if stop is None else min(stop, self.n_cells)
        for first in range(start, stop, chunk_size):
            last = min(first + chunk_size, stop)
            pieces = []
            for reader, offset in zip(self.readers, self.starts):
                lo, hi = max(first - offset, 0), min(last - offset, reader.n_cells)  # the reader's own rows
                if lo < hi:
                    pieces += reader.chunks(hi - lo, lo, hi, tokenize=tokenize)
            if len(pieces) == 1:
                yield replace(pieces[0], first=first)
                continue
            aux = None if pieces[0].aux_ids is None else np.concatenate([p.aux_ids for p in pieces])
            yield Chunk(first, [cell for p in pieces for cell in p.cells], aux)

    def samples(self, cells: int):
        """(input, its genes' ids in the gene index, the counts of its first ``cells`` cells) per input."""
        for reader in self.readers:
            yield (reader.path, *reader.sample(cells))

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


@contextlib.contextmanager
def _fix_named():
    """A shard that cannot be read: its error, with the fix."""
    try:
        yield
    except ShardError as err:
        raise ShardError(f"{err}; re-write the shards with tfx shard") from None


class ShardDirReader:
    """The cells of a ``tfx shard`` directory, in its manifest's order, read as a CellReader reads an
    h5ad: each cell's expressed genes in the gene index (through its shard's gene table) in var order,
    with their raw counts. Only the manifest's plain .tar names beside it are read (``resolve_urls``).
    Reading rows on from where the last read ended continues the open shard; other rows reopen their
    shard and skip to them. ``obs`` reads every shard once (the names and kept obs columns)."""

    def __init__(self, path: Path, gene_index=None, aux_vocabs=None, species: list[str] | None = None):
        self.path, self.gene_index, self.aux_vocabs = path, gene_index, dict(aux_vocabs or {})
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            self.sizes = [int(s["cells"]) for s in manifest["shards"]]
            kept, made_for = set(manifest.get("obs_values", {})), str(manifest["species"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{path / MANIFEST}: not a readable shard manifest ({type(err).__name__}: {err}); "
                             "re-write the shards with tfx shard") from None
        self.urls = resolve_urls(str(path))
        if species is not None and made_for not in species:
            raise InputError(f"{path}: shards of species {made_for} ({MANIFEST}), the checkpoint's vocabulary holds "
                             f"{', '.join(species)}; use a checkpoint of {made_for} or serve it with "
                             f"--species-embedding {made_for}_gene.h5")
        for col in self.aux_vocabs:
            if col not in kept:
                log.warning("%s: the shards kept no '%s' obs column; every cell gets the unknown %s token",
                            path, col, col)
        self.starts = np.cumsum([0, *self.sizes])
        self.n_cells = int(self.starts[-1])
        self._reading = None  # (shard, its next row, its cells, its gene table's ids): where the last read ended
        if gene_index is not None and self.n_cells:
            with _fix_named():
                cells, table = self._shard(0)
            cells.close()
            if not (table >= 0).any():
                raise InputError(f"{self.urls[0]}: none of the {len(table)} genes of its gene table is in the "
                                 "model's vocabulary; shard the cells by the vocabulary's gene ids (tfx shard "
                                 "--gene-col), or serve their species (--species-embedding)")

    def _shard(self, shard: int):
        """(the shard's cells, its gene table's ids in the gene index), checked against the manifest."""
        url = self.urls[shard]
        cells = read_shard(url)
        header = next(cells)
        if header.get("cells") != self.sizes[shard]:
            cells.close()
            raise ShardError(f"{url}: holds {header.get('cells')} cells, its manifest says {self.sizes[shard]}")
        genes = header.get("genes")
        if not isinstance(genes, list):
            cells.close()
            raise ShardError(f"{url}: its header has no gene table")
        table = np.arange(len(genes)) if self.gene_index is None else np.asarray(self.gene_index(genes), np.int64)
        return cells, table

    def _cells(self, start: int, stop: int):
        """(gene ids, counts, metadata) of rows start..stop."""
        with _fix_named():
            yield from self._read(start, stop)

    def _read(self, start: int, stop: int):
        row = start
        while row < stop:
            shard = int(np.searchsorted(self.starts, row, side="right")) - 1
            local, end = row - int(self.starts[shard]), int(self.starts[shard + 1])
            if self._reading is not None and self._reading[:2] == (shard, local):
                cells, table = self._reading[2:]
            else:
                self._stop_reading()
                cells, table = self._shard(shard)
                for _ in range(local):
                    next(cells)
            while row < min(stop, end):
                genes, counts, meta = next(cells)
                row += 1
                self._reading = (shard, row - int(self.starts[shard]), cells, table)
                ids = table[genes]
                keep = ids >= 0
                yield ids[keep], counts[keep], meta
            if row == end:
                next(cells, None)  # the shard's end: read_shard checks it held every cell, and closes it
                self._reading = None

    def chunks(self, chunk_size: int = 4096, start: int = 0, stop: int | None = None, tokenize=None, rng=None):
        stop = self.n_cells if stop is None else min(stop, self.n_cells)
        cells = self._cells(start, stop)
        for first in range(start, stop, chunk_size):
            rows = [next(cells) for _ in range(min(chunk_size, stop - first))]
            metas = [meta.get("obs", {}) for _, _, meta in rows]
            aux = aux_token_ids(self.aux_vocabs, {col: [m.get(col) for m in metas] for col in self.aux_vocabs},
                                len(rows))
            pairs = [(ids, counts) for ids, counts, _ in rows]
            yield Chunk(first, [tokenize(*pair, rng) for pair in pairs] if tokenize else pairs, aux)

    def read_obs(self) -> pd.DataFrame:
        """Every cell's name and the obs columns the shards kept (each shard read once)."""
        metas = [meta for _, _, meta in self._cells(0, self.n_cells)]
        return pd.DataFrame([m.get("obs", {}) for m in metas], index=pd.Index([str(m["id"]) for m in metas]))

    def sample(self, cells: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """The first shard's gene table's ids, and its first ``cells`` cells' counts over that table."""
        with _fix_named():
            stream, table = self._shard(0)
            try:
                rows = [next(stream)[:2] for _ in range(min(cells, self.sizes[0]))]
            finally:
                stream.close()
        indptr = np.cumsum([0, *(len(genes) for genes, _ in rows)])
        data = np.concatenate([counts for _, counts in rows]) if rows else np.zeros(0, np.float32)
        indices = np.concatenate([genes for genes, _ in rows]).astype(np.int64) if rows else np.zeros(0, np.int64)
        return table, sp.csr_matrix((data, indices, indptr), shape=(len(rows), len(table)))

    def _stop_reading(self) -> None:
        if self._reading is not None:
            self._reading[2].close()
            self._reading = None

    def close(self) -> None:
        self._stop_reading()
