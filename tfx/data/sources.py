"""Which reader an input gets, decided in one place: an h5ad file (or an in-memory AnnData) is read
by ``CellReader``, a TileDB-SOMA experiment (a directory, a URI, or a ``SomaSource``) by ``SomaReader``.
Both are CellReaders, so every consumer reads either."""

from __future__ import annotations

import os
import re
from pathlib import Path

import anndata

from tfx.data.anndata import CellReader
from tfx.data.soma import SomaReader, SomaSource
from tfx.errors import InputError

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_soma(data) -> bool:
    """A SOMA experiment: a ``SomaSource``, a URI (``s3://``, ``tiledb://``, ...) or a local directory;
    an h5ad is a file."""
    if isinstance(data, SomaSource):
        return True
    if isinstance(data, anndata.AnnData) or not isinstance(data, (str, os.PathLike)):
        return False
    text = os.fspath(data)
    return bool(URL.match(text)) and not text.startswith("file://") or Path(text).is_dir()


def soma_source(data, measurement: str = "RNA", obs_filter: str | None = None) -> SomaSource:
    if isinstance(data, SomaSource):
        return data if (measurement, obs_filter) == ("RNA", None) else \
            SomaSource(data.uri, measurement, obs_filter, data.config)
    return SomaSource(os.fspath(data), measurement, obs_filter)


def open_reader(data, gene_index=None, *, measurement: str = "RNA", obs_filter: str | None = None,
                **options) -> CellReader:
    """The reader of ``data`` (see the module docstring); ``options`` are CellReader's. An obs filter
    selects cells of a SOMA experiment only."""
    if is_soma(data):
        return SomaReader(soma_source(data, measurement, obs_filter), gene_index, **options)
    if obs_filter:
        raise InputError(f"--obs-filter selects cells of a TileDB-SOMA experiment; {_name(data)} is not one "
                         "(subset it with anndata, or convert it with tiledbsoma.io.from_anndata)")
    return CellReader(data, gene_index, **options)


def _name(data) -> str:
    return "AnnData" if isinstance(data, anndata.AnnData) else os.fspath(data)
