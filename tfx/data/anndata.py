"""Reading cells from h5ad files: validation with one-line errors, streamed in row chunks.

Files are read with h5py, and only var is read whole: X and obs are read a chunk of rows at a time
(obs only in the columns asked for), so peak memory is bounded by the chunk size whatever the
number of cells. Each cell comes out as its expressed, in-vocabulary genes in var order with their
raw counts: exactly the genes the reference keeps before it pads.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.experimental import read_dispatched
from anndata.io import read_elem, sparse_dataset

from tfx.data import MAX_COUNT
from tfx.data.labels import LabelCodec
from tfx.errors import InputError
from tfx.tokenize import Preprocessing
from tfx.vocab.aux import aux_token_ids

log = logging.getLogger(__name__)


def strip_version(gene_ids) -> np.ndarray:
    return np.array([str(g).split(".")[0] for g in gene_ids], dtype=object)


@dataclass
class Chunk:
    """Consecutive cells of a file, from row ``first``."""

    first: int
    cells: list[tuple[np.ndarray, np.ndarray]]  # each cell's expressed genes (ids, counts); tokens when tokenized
    aux_ids: np.ndarray | None = None  # [cells, aux columns] when the reader has aux vocabularies
    labels: np.ndarray | None = None  # the cells' encoded labels when the reader has a label codec


class ObsFrame:
    """obs held in memory: an AnnData's, or the cells a SOMA query selected."""

    def __init__(self, frame: pd.DataFrame):
        self.frame, self.columns = frame, list(frame.columns)

    def __len__(self) -> int:
        return len(self.frame)

    def read(self, columns: list[str], start: int, stop: int) -> pd.DataFrame:
        return self.frame.iloc[start:stop][columns]  # a new frame: callers may add columns


class H5Obs:
    """obs of an open h5ad file (anndata's dataframe encoding 0.2.0), left on disk: each read takes
    only the rows and columns asked for, through anndata's element readers."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.columns = [str(c) for c in group.attrs["column-order"]]
        self.index_key = str(group.attrs["_index"])
        self._categories = {}  # a categorical column's categories, read once

    def __len__(self) -> int:
        return len(self.group[self.index_key])

    def read(self, columns: list[str], start: int, stop: int) -> pd.DataFrame:
        rows = slice(start, stop)
        # as anndata's own dataframe reader builds it, from the columns asked for
        frame = pd.DataFrame({k: self._read_rows(self.group[k], rows) for k in columns},
                             index=self._read_rows(self.group[self.index_key], rows),
                             columns=columns if columns else None)
        if self.index_key != "_index":
            frame.index.name = self.index_key
        return frame

    def _read_rows(self, elem, rows: slice):
        """One column (or the index) at ``rows``. anndata's public readers read an element whole (its lazy
        reader needs dask), so they run here with the arrays under them read at ``rows``: every array
        of an obs column but a categorical's categories holds one value per cell (a plain column, a
        categorical's codes, a nullable's values and mask); categories are read whole, once a column."""
        def read(read_elem_whole, name: str, sub, iospec):
            if not isinstance(sub, h5py.Dataset):
                return read_elem_whole(sub)
            if name.endswith("/categories"):
                if name not in self._categories:
                    self._categories[name] = read_elem_whole(sub)
                return self._categories[name]
            return (sub.asstr() if iospec.encoding_type == "string-array" else sub)[rows]
        return read_dispatched(elem, read)


class CellReader:
    """Cells of one h5ad file, mapped to a gene index (vocabulary ids, or any id -> int map): the one
    road from an h5ad (or an in-memory AnnData) to cells, for training, inference, prompting,
    sharding and evaluation.

    Without a gene index, a cell's genes come out as positions in ``self.genes`` (raw identifiers,
    for model-independent shards); duplicate genes still follow ``remove_duplicate_genes``.
    ``aux_vocabs`` and ``labels`` add each chunk's aux token ids and encoded labels.
    """

    def __init__(self, path: str | os.PathLike | anndata.AnnData, gene_index=None, gene_col: str = "ensembl_id",
                 use_raw: bool | None = None, remove_duplicate_genes: bool = False,
                 aux_vocabs: Mapping[str, Mapping[str, int]] | None = None, labels: LabelCodec | None = None):
        self.opened = not isinstance(path, anndata.AnnData)  # close only what this reader opened
        self.file = None
        if not self.opened:  # in memory (tfx.embed): read as it is, errors name "AnnData"
            self.path, adata = "AnnData", path
            self._choose_raw(adata.raw is not None, use_raw)
            var, self.X = (adata.raw.var, adata.raw.X) if self.using_raw else (adata.var, adata.X)
            obs = ObsFrame(adata.obs)
        else:
            self.path = Path(path)
            self.file = open_h5ad(self.path)
            try:
                var, obs = self._open_file(use_raw)
            except BaseException:
                self.file.close()
                raise
        if self.X is None:
            raise InputError(f"{self.path}: the file has no expression matrix X")
        self._setup(obs, var, gene_index, gene_col, remove_duplicate_genes, aux_vocabs, labels)

    def _choose_raw(self, has_raw: bool, use_raw: bool | None) -> None:
        if use_raw and not has_raw:
            raise InputError(f"{self.path}: --use-raw true but the file has no .raw; use --use-raw false or auto")
        self.using_raw = bool(has_raw if use_raw is None else use_raw)

    def _open_file(self, use_raw: bool | None) -> tuple[pd.DataFrame, ObsFrame | H5Obs]:
        """var, and obs left on disk; X as anndata's backed mode serves it (rows read when sliced). Not
        ``anndata.read_h5ad(backed="r")``: it reads the whole obs (and obsm, layers) into memory."""
        f = self.file
        try:
            self._choose_raw("raw" in f, use_raw)
            matrix = (f["raw"] if self.using_raw else f).get("X")
            self.X = sparse_dataset(matrix) if isinstance(matrix, h5py.Group) else matrix
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # anndata's notes on older encodings
                var = read_elem(f["raw/var"] if self.using_raw else f["var"])
                spec = (f["obs"].attrs.get("encoding-type"), f["obs"].attrs.get("encoding-version"))
                # an older encoding (anndata < 0.8) is read whole, by anndata
                obs = H5Obs(f["obs"]) if spec == ("dataframe", "0.2.0") else ObsFrame(read_elem(f["obs"]))
            n_obs = len(obs)
        except InputError:
            raise
        except Exception as err:  # h5py/anndata raise many types for a bad file
            raise InputError(f"{self.path}: not a readable h5ad file ({type(err).__name__}: {err})") from err
        if self.X is not None and tuple(self.X.shape) != (n_obs, len(var)):
            raise InputError(f"{self.path}: not a readable h5ad file (X is {self.X.shape[0]} x {self.X.shape[1]}, "
                             f"obs and var name {n_obs} x {len(var)})")
        return var, obs

    def _setup(self, obs: ObsFrame | H5Obs, var: pd.DataFrame, gene_index, gene_col: str,
               remove_duplicate_genes: bool, aux_vocabs: Mapping[str, Mapping[str, int]] | None,
               labels: LabelCodec | None) -> None:
        """What every reader shares once its source is open: the gene table mapped to the index, the
        aux vocabularies and label column checked against obs (reading those columns only)."""
        self._obs = obs
        self.genes = strip_version(self._gene_ids(var, gene_col))
        self.column_ids = self._map_columns(gene_index, remove_duplicate_genes, gene_col)
        self._warned_non_integer = False
        self.aux_vocabs, self.labels = dict(aux_vocabs or {}), labels
        for col, vocab in self.aux_vocabs.items():
            if col not in self.obs_columns:
                log.warning("%s: obs has no '%s' column; every cell gets the unknown %s token", self.path, col, col)
                continue
            counts = self.read_obs([col])[col].astype(str).value_counts()
            unknown = counts[[v not in vocab for v in counts.index]]
            if len(unknown):
                log.warning("%s: %d cells have %s values the checkpoint does not know, read as 'unknown': %s",
                            self.path, int(unknown.sum()), col,
                            ", ".join(f"{v} ({n})" for v, n in unknown.head(5).items()))
        if labels is not None:
            labels.check_column(self.obs_columns, str(self.path))

    @property
    def n_cells(self) -> int:
        return len(self._obs)

    @property
    def obs_columns(self) -> list[str]:
        return self._obs.columns

    def read_obs(self, columns=None, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """obs of rows start..stop (default: every row), indexed by cell name, with ``columns`` only
        (default: all). A file's obs is read from it at each call: ask for the rows and columns needed."""
        columns = self.obs_columns if columns is None else list(columns)
        return self._obs.read(columns, start, self.n_cells if stop is None else min(stop, self.n_cells))

    def _gene_ids(self, var: pd.DataFrame, gene_col: str):
        if gene_col in var.columns:
            return var[gene_col].astype(str).to_numpy()
        if gene_col == "index":
            return var.index.astype(str).to_numpy()
        cols = ", ".join(map(str, var.columns[:10])) or "none"
        raise InputError(
            f"{self.path}: var has no gene column '{gene_col}' (columns: {cols}); "
            "pass --gene-col NAME, or --gene-col index to use the var index"
        )

    def _map_columns(self, gene_index, remove_duplicate_genes: bool, gene_col: str) -> np.ndarray:
        genes = pd.Series(self.genes)
        dup = genes.duplicated()
        if dup.any():
            if not remove_duplicate_genes:
                raise InputError(
                    f"{self.path}: {int(dup.sum())} duplicate genes in var['{gene_col}'] after stripping versions "
                    f"(e.g. {genes[dup].iloc[0]}); remove them or pass --remove-duplicate-genes"
                )
            log.warning("%s: dropped %d duplicate genes (first occurrence kept)", self.path, int(dup.sum()))
        if gene_index is None:
            ids = np.arange(len(self.genes), dtype=np.int64)
        else:
            ids = np.asarray(gene_index(self.genes), dtype=np.int64)
        ids[dup.to_numpy()] = -1
        if not len(ids):
            raise InputError(f"{self.path}: var lists no gene; the file holds no expression to read")
        if not (ids >= 0).any():
            raise InputError(
                f"{self.path}: none of the {len(ids)} genes in var['{gene_col}'] (e.g. {self.genes[0]}) is in the "
                "model's vocabulary; check --gene-col and the species (--species-embedding)"
            )
        return ids

    def check_values(self, data: np.ndarray, start: int) -> None:
        if not np.isfinite(data).all():
            what = "NaN" if np.isnan(data).any() else "infinite values"
            raise InputError(f"{self.path}: X holds {what} (in cells from row {start}); counts must be raw, finite counts")
        if data.size and data.max() > MAX_COUNT:
            raise InputError(f"{self.path}: X holds a count of {data.max():.3g} (in cells from row {start}), above "
                             f"{MAX_COUNT:.0e}; counts must be raw counts")
        if (data < 0).any():
            raise InputError(f"{self.path}: X holds negative values (in cells from row {start}); pass raw counts")
        if not self._warned_non_integer and not np.allclose(data, np.round(data), atol=1e-6):
            self._warned_non_integer = True
            log.warning(
                "%s: X holds non-integer values; TranscriptFormer expects raw counts, not normalised data "
                "(use .raw or the counts layer)", self.path,
            )

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        chunk = self.X[start:stop]
        if sp.issparse(chunk):
            return sp.csr_matrix(chunk)
        return sp.csr_matrix(np.asarray(chunk))

    def sample(self, cells: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """The genes' ids in the gene index (-1: not in it), and the first ``cells`` cells' counts."""
        return self.column_ids, self.read_rows(0, min(self.n_cells, cells))

    def iter_chunks(self, chunk_size: int = 4096, start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, list[tuple[np.ndarray, np.ndarray]]]]:
        """Yield (first row, cells) for rows start..stop, each cell (gene ids in var order, counts)."""
        keep = np.flatnonzero(self.column_ids >= 0)
        keep_ids = self.column_ids[keep]
        stop = self.n_cells if stop is None else min(stop, self.n_cells)
        for row in range(start, stop, chunk_size):
            x = self.read_rows(row, min(row + chunk_size, stop))
            self.check_values(x.data, row)
            x = x[:, keep]
            x.eliminate_zeros()
            x.sort_indices()
            cells = [
                (keep_ids[x.indices[s:e]], x.data[s:e].astype(np.float32))
                for s, e in zip(x.indptr[:-1], x.indptr[1:])
            ]
            yield row, cells

    def chunks(self, chunk_size: int = 4096, start: int = 0, stop: int | None = None,
               tokenize: Preprocessing | None = None, rng=None) -> Iterator[Chunk]:
        """Rows start..stop in chunks: their cells (tokenized when ``tokenize`` is given), aux ids and
        labels."""
        wanted = [*self.aux_vocabs, *([self.labels.key] if self.labels is not None else [])]
        columns = [c for c in dict.fromkeys(wanted) if c in self.obs_columns]
        for first, cells in self.iter_chunks(chunk_size, start, stop):
            obs = self.read_obs(columns, first, first + len(cells))
            if tokenize is not None:
                cells = [tokenize(ids, counts, rng) for ids, counts in cells]
            aux = aux_token_ids(self.aux_vocabs, {c: obs[c].astype(str).to_numpy() for c in self.aux_vocabs
                                                  if c in obs.columns}, len(obs))
            labels = None if self.labels is None else self.labels.encode(obs[self.labels.key].to_numpy(),
                                                                          f"{self.path} (rows from {first})")
            yield Chunk(first, cells, aux, labels)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def open_h5ad(path: Path) -> h5py.File:
    """``path`` open for reading; a missing or unreadable file is one InputError naming it."""
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    try:
        return h5py.File(path, "r")
    except Exception as err:  # h5py raises several types for a file that is not HDF5
        raise InputError(f"{path}: not a readable h5ad file ({type(err).__name__}: {err})") from err
