"""Reading cells from a TileDB-SOMA experiment (the CZ CELLxGENE Census's store), streamed in row chunks.

    reader = SomaReader(SomaSource("path/or/uri", measurement="RNA",
                                   obs_filter="is_primary_data == True and tissue_general == 'lung'"), gene_index)

A ``SomaReader`` is a ``CellReader``: the same ``genes``, ``read_obs``, ``n_cells``, ``column_ids``,
``read_rows``, ``iter_chunks``, ``chunks``, ``check_values`` and ``close``, so training, inference,
sharding and prompting read an experiment as they read an h5ad. Its rows are the cells the obs
filter selects, in ``soma_joinid`` order (an experiment written by ``tiledbsoma.io.from_anndata``
keeps the h5ad's order), so an h5ad holding the same cells gives the same cells, row for row.

The filter is TileDB-SOMA's ``value_filter`` (``AxisQuery``): comparisons of obs columns with
``==``, ``!=``, ``<``, ``>``, ``in [...]``, joined by ``and``/``or``, as pandas' ``obs.query`` reads them.
The expression layer is the one the obs ``value_filter`` names: ``raw`` (the Census), else ``data``
(what ``from_anndata`` writes for X), else an experiment's only layer. The gene column ``index``
is var's ``var_id`` (``from_anndata``'s name for the var index); the Census keeps Ensembl ids in
``feature_id``. Only the rows of a chunk are read at a time; obs of the selected cells is held.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tfx.data.anndata import CellReader, ObsFrame
from tfx.data.labels import LabelCodec
from tfx.errors import InputError

log = logging.getLogger(__name__)

LAYERS = ("raw", "data")  # the X layer read, first found; otherwise an experiment's only one
OBS_ID, VAR_ID = "obs_id", "var_id"  # from_anndata's columns for the obs and var index
JOINID = "soma_joinid"


@dataclass(frozen=True)
class SomaSource:
    """How to open an experiment and which cells to read: picklable, so worker processes reopen it.
    ``config``: TileDB settings as (key, value) pairs (the Census client's S3 region, for one)."""

    uri: str
    measurement: str = "RNA"
    obs_filter: str | None = None
    config: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The experiment's last path part: it names the dataset, as a file's name does."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1] or self.uri


def tiledbsoma_module():
    try:
        import tiledbsoma
    except ImportError:
        raise InputError("reading a TileDB-SOMA experiment needs the tiledbsoma package; "
                         "pip install 'tfx[soma]'") from None
    return tiledbsoma


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def filter_columns(expr: str) -> list[str]:
    """The obs columns a filter names (its bare names), or InputError when it is not an expression."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as err:
        raise InputError(f"--obs-filter {expr!r}: not an expression ({err.msg}); write e.g. "
                         "\"tissue_general == 'lung' and is_primary_data == True\"") from None
    return list(dict.fromkeys(n.id for n in ast.walk(tree)
                              if isinstance(n, ast.Name) and n.id not in ("True", "False", "None")))


def open_experiment(source: SomaSource):
    """The experiment at ``source.uri``, open for reading; a wrong URI is one InputError."""
    absent = InputError(f"{source.uri}: no TileDB-SOMA experiment there; check the path or URI "
                        "(an h5ad file is read as a file, a tfx shard directory by its manifest.json)")
    # a local directory without a TileDB group's marker is none: tiledb would open each file in it to
    # find out, and would wait forever on a FIFO there
    if "://" not in source.uri and not os.path.exists(os.path.join(source.uri, "__tiledb_group.tdb")):
        raise absent
    soma = tiledbsoma_module()
    context = soma.SOMATileDBContext(tiledb_config=dict(source.config)) if source.config else None
    try:
        return soma.Experiment.open(source.uri, context=context)
    except soma.DoesNotExistError:
        raise absent from None
    except Exception as err:  # tiledb reports a wrong object type, a network or permission failure alike
        raise InputError(f"{source.uri}: not a readable TileDB-SOMA experiment ({_first_line(err)})") from None


class SomaReader(CellReader):
    """Cells of a TileDB-SOMA experiment's measurement that an obs filter selects; see the module docstring."""

    def __init__(self, source: SomaSource, gene_index=None, gene_col: str = "ensembl_id",
                 use_raw: bool | None = None, remove_duplicate_genes: bool = False,
                 aux_vocabs: Mapping[str, Mapping[str, int]] | None = None, labels: LabelCodec | None = None):
        self.source, self.path, self.opened = source, source.uri, True
        if use_raw:
            raise InputError(f"{source.uri}: --use-raw true reads an h5ad's .raw; a SOMA experiment has none "
                             "(name its measurement with --measurement)")
        self.using_raw = False
        self.experiment = open_experiment(source)
        try:
            obs, var = self._open(source)
            self._setup(ObsFrame(obs), var, gene_index, gene_col, remove_duplicate_genes, aux_vocabs, labels)
        except BaseException:
            self.experiment.close()
            raise

    def _open(self, source: SomaSource) -> tuple[pd.DataFrame, pd.DataFrame]:
        soma, exp = tiledbsoma_module(), self.experiment
        measurements = list(exp.ms.keys()) if "ms" in exp else []
        if source.measurement not in measurements:
            raise InputError(f"{source.uri}: no measurement '{source.measurement}' (it has: "
                             f"{', '.join(measurements) or 'none'}); pass --measurement NAME")
        ms = exp.ms[source.measurement]
        layers = list(ms.X.keys()) if "X" in ms else []
        layer = next((name for name in LAYERS if name in layers), layers[0] if len(layers) == 1 else None)
        if layer is None:
            raise InputError(f"{source.uri}: measurement {source.measurement} has X layers {', '.join(layers) or 'none'}; "
                             f"tfx reads raw counts from one named {' or '.join(LAYERS)}")
        self.X = ms.X[layer]
        columns = list(exp.obs.schema.names)
        value_filter = None
        if source.obs_filter is not None and source.obs_filter.strip():
            value_filter = source.obs_filter
            missing = [c for c in filter_columns(value_filter) if c not in columns]
            if missing:
                shown = ", ".join(c for c in columns if c != JOINID)
                raise InputError(f"--obs-filter: obs of {source.uri} has no column '{missing[0]}' "
                                 f"(columns: {shown[:300]}); fix the filter")
        try:
            query = exp.axis_query(source.measurement, obs_query=soma.AxisQuery(value_filter=value_filter))
            obs = query.obs().concat().to_pandas()
            var = ms.var.read().concat().to_pandas()
        except InputError:
            raise
        except Exception as err:
            what = f"--obs-filter {value_filter!r}" if value_filter else source.uri
            raise InputError(f"{what}: cannot be read from {source.uri} ({_first_line(err)})") from None
        obs = obs.sort_values(JOINID, kind="stable")
        self.joinids = obs[JOINID].to_numpy(dtype=np.int64)
        obs = obs.set_index(obs[OBS_ID].astype(str) if OBS_ID in obs else obs[JOINID].astype(str))
        obs.index.name = None
        obs = obs.drop(columns=[c for c in (JOINID, OBS_ID) if c in obs])
        var = var.sort_values(JOINID, kind="stable")
        var_joinids = var[JOINID].to_numpy(dtype=np.int64)
        self._var_pos = np.full(int(var_joinids.max()) + 1 if len(var_joinids) else 0, -1, dtype=np.int64)
        self._var_pos[var_joinids] = np.arange(len(var_joinids))
        var = var.set_index(var[VAR_ID].astype(str) if VAR_ID in var else var[JOINID].astype(str))
        var.index.name = None
        var = var.drop(columns=[c for c in (JOINID, VAR_ID) if c in var])
        log.info("%s: %d cells selected%s, %d genes", source.uri, len(obs),
                 f" by {value_filter!r}" if value_filter else "", len(var))
        return obs, var

    @property
    def n_cells(self) -> int:
        return len(self.joinids)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        ids = self.joinids[start:stop]
        shape = (len(ids), len(self.genes))
        if not len(ids):
            return sp.csr_matrix(shape, dtype=np.float32)
        try:
            table = self.X.read((ids, slice(None))).tables().concat()
        except Exception as err:
            raise InputError(f"{self.path}: cells from row {start} cannot be read ({_first_line(err)})") from None
        rows = np.searchsorted(ids, table["soma_dim_0"].to_numpy())
        cols = self._var_pos[table["soma_dim_1"].to_numpy()]
        data = table["soma_data"].to_numpy()
        return sp.csr_matrix((data, (rows, cols)), shape=shape)

    def close(self) -> None:
        self.experiment.close()
