"""`tfx download-data`: CZ CELLxGENE datasets of chosen species, as the reference lays them out.

    OUTPUT/dataset_metadata.json          every dataset the portal listed for the species
    OUTPUT/<dataset_id>/full.h5ad         the dataset's source h5ad
    OUTPUT/<dataset_id>/__success__       written last: the dataset is complete
    OUTPUT/shards/<species>/<dataset_id>/ with --shard: tfx shards (complete once manifest.json exists)
    OUTPUT/shards/<species>/census/       with --shard --from-census: the species' cells streamed from the
                                          Census's TileDB-SOMA store (primary cells, or an obs filter's)

The portal is reached through a ``PortalClient``; ``CensusPortal`` wraps the field's client library
(``cellxgene-census``, the ``tfx[data]`` extra). Selection, retries, markers and sharding live here,
so they run the same whatever the client.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tfx.atomic import atomic_path

log = logging.getLogger(__name__)

METADATA = "dataset_metadata.json"
DATA_FILE = "full.h5ad"
MARKER = "__success__"
SHARDS = "shards"
GENE_COL = "index"  # the CELLxGENE schema keeps Ensembl ids in the var index (raw counts in raw.X if X is not)


class PortalError(ValueError):
    """download-data cannot go on, or some datasets failed; the message says what to do."""


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    organisms: tuple[str, ...]  # species of its cells, as snake_case binomials ("homo_sapiens")
    primary: bool  # holds primary data, not cells duplicated from another dataset
    metadata: dict = field(default_factory=dict, compare=False)  # the portal's description, saved as is


class PortalClient(Protocol):
    def list_datasets(self, species: list[str]) -> list[Dataset]:
        """Datasets holding cells of any of ``species`` (snake_case binomials)."""

    def download(self, dataset_id: str, path: Path) -> None:
        """Write the dataset's h5ad to ``path``, which does not exist yet."""

    def experiment(self, species: str):
        """The species' TileDB-SOMA experiment, as a ``tfx.data.soma.SomaSource`` (for --from-census)."""


class CensusPortal:
    """The CZ CELLxGENE Census as a PortalClient: datasets with primary cells of each species, and
    their source h5ad files. The Census holds fewer species than Discover (see docs/download.md)."""

    def __init__(self, census_version: str = "stable"):
        try:
            import cellxgene_census
        except ImportError:
            raise PortalError("the CELLxGENE client is not installed; pip install 'tfx[data]'") from None
        self.census = cellxgene_census
        self.version = census_version

    def list_datasets(self, species: list[str]) -> list[Dataset]:
        organisms: dict[str, set[str]] = {}
        with self.census.open_soma(census_version=self.version) as census:
            available = set(census["census_data"].keys())
            missing = [s for s in species if s not in available]
            if missing:
                raise PortalError(f"--species {', '.join(missing)}: not in the CELLxGENE Census {self.version} "
                                  f"(it holds {', '.join(sorted(available))})")
            info = census["census_info"]["datasets"].read().concat().to_pandas().set_index("dataset_id")
            for sp in species:
                cells = census["census_data"][sp].obs.read(
                    column_names=["dataset_id"], value_filter="is_primary_data == True").concat().to_pandas()
                for dataset_id in cells["dataset_id"].unique():
                    organisms.setdefault(str(dataset_id), set()).add(sp)
        return [Dataset(d, tuple(sorted(orgs)), True, json.loads(info.loc[d].to_json()))
                for d, orgs in sorted(organisms.items())]

    def download(self, dataset_id: str, path: Path) -> None:
        self.census.download_source_h5ad(dataset_id, str(path), census_version=self.version, progress_bar=False)

    def experiment(self, species: str):
        """Where the species' experiment lives and how to open it (the client's S3 settings), so that
        tfx's SOMA reader, in any process, reads it as the client does."""
        from tfx.data.soma import SomaSource

        with self.census.open_soma(census_version=self.version) as census:
            available = set(census["census_data"].keys())
            if species not in available:
                raise PortalError(f"--species {species}: not in the CELLxGENE Census {self.version} "
                                  f"(it holds {', '.join(sorted(available))})")
            uri = census["census_data"][species].uri
            config = tuple(sorted((str(k), str(v)) for k, v in census.context.tiledb_config.items()))
        return SomaSource(uri, "RNA", None, config)


def parse_species(values: list[str]) -> list[str]:
    """'Homo sapiens,mus musculus' or ['homo_sapiens', ...] -> ['homo_sapiens', 'mus_musculus']."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not names:
        raise PortalError("no --species given; name one or more, e.g. --species 'homo sapiens'")
    return list(dict.fromkeys("_".join(n.lower().split()) for n in names))


def select_datasets(datasets: list[Dataset], species: list[str]) -> list[Dataset]:
    """As the reference: primary datasets of exactly one organism, one of ``species``; each once."""
    chosen: dict[str, Dataset] = {}
    for ds in datasets:
        if ds.primary and len(ds.organisms) == 1 and ds.organisms[0] in species:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", ds.dataset_id):  # it names a directory
                raise PortalError(f"the portal listed a dataset id {ds.dataset_id!r} that is not a safe "
                                  "directory name; refusing to download")
            chosen.setdefault(ds.dataset_id, ds)
    return list(chosen.values())


def download_data(client: PortalClient, species: list[str], output_dir: str | os.PathLike, *,
                  processes: int = 4, max_retries: int = 5, retry_wait: float = 5.0, save_metadata: bool = True,
                  shard: bool = False, cells_per_shard: int = 10_000) -> dict:
    """Download every selected dataset not yet complete, ``processes`` at a time; with ``shard``,
    write each dataset's shards too. Raises PortalError naming the datasets that failed after
    ``max_retries`` attempts, once all others are done (a re-run retries only those)."""
    species = parse_species(species)
    if shard:
        _check_shard_species(species)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed = client.list_datasets(species)
    if save_metadata:
        records = [{"dataset_id": d.dataset_id, "organisms": list(d.organisms), "is_primary_data": d.primary,
                    **d.metadata} for d in listed]
        with atomic_path(out / METADATA) as tmp:
            tmp.write_text(json.dumps(records, indent=2))
    selected = select_datasets(listed, species)
    log.info("%d datasets listed for %s, %d selected", len(listed), ", ".join(species), len(selected))

    def fetch(ds: Dataset) -> str | None:
        return _download_one(client, ds, out, max_retries, retry_wait)

    with ThreadPoolExecutor(max(1, processes)) as pool:  # downloads wait on the network, not the CPU
        outcomes = dict(zip((d.dataset_id for d in selected), pool.map(fetch, selected)))
    failed = [d for d, outcome in outcomes.items() if outcome is None]
    done = [d for d in selected if d.dataset_id not in failed]
    sharded = sum(_shard(ds, out, cells_per_shard) for ds in done) if shard else 0
    if failed:
        raise PortalError(f"{len(failed)} of {len(selected)} datasets failed after {max_retries} attempts "
                          f"({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}); the others are "
                          "complete, run the same command again to retry these")
    return {"output": str(out), "listed": len(listed), "selected": len(selected),
            "downloaded": sum(o == "downloaded" for o in outcomes.values()),
            "present": sum(o == "present" for o in outcomes.values()), "sharded": sharded}


def _download_one(client: PortalClient, ds: Dataset, out: Path, max_retries: int, retry_wait: float) -> str | None:
    """'present', 'downloaded', or None after ``max_retries`` failed attempts."""
    folder = out / ds.dataset_id
    if (folder / MARKER).exists():
        return "present"
    folder.mkdir(exist_ok=True)
    import h5py  # here, not at the top: every command imports this module for its error types

    for attempt in range(1, max_retries + 1):
        try:
            with atomic_path(folder / DATA_FILE) as tmp:
                client.download(ds.dataset_id, tmp)
                if not h5py.is_hdf5(tmp):  # e.g. an error page saved in its place
                    raise PortalError(f"{ds.dataset_id}: the download is not an h5ad file")
            with atomic_path(folder / MARKER) as tmp:
                tmp.write_text("success")  # the reference's marker, so its tools see the dataset too
            log.info("%s: downloaded", ds.dataset_id)
            return "downloaded"
        except Exception as err:  # clients raise whatever their transport does; all are worth a retry
            log.warning("%s: attempt %d of %d failed (%s: %s)", ds.dataset_id, attempt, max_retries,
                        type(err).__name__, err)
            if attempt < max_retries:
                time.sleep(retry_wait * 2 ** (attempt - 1))
    return None


def _check_shard_species(species: list[str]) -> None:
    import tfx.vocab.species  # noqa: F401  (registers the built-in species)
    from tfx.registry import SPECIES

    unknown = [s for s in species if s not in SPECIES]
    if unknown:
        raise PortalError(f"--shard: tfx has no species {', '.join(unknown)} (registered: "
                          f"{', '.join(SPECIES.names())}); register it, or download without --shard")


def _shard(ds: Dataset, out: Path, cells_per_shard: int) -> bool:
    """Write ``ds``'s shards unless complete; True when written."""
    from tfx.data.shards import MANIFEST, write_shards

    species = ds.organisms[0]
    shard_dir = out / SHARDS / species / ds.dataset_id
    if (shard_dir / MANIFEST).exists():
        return False
    # write_shards names the dataset after its input file: through a link, the dataset id, not "full"
    link = out / ds.dataset_id / f"{ds.dataset_id}.h5ad"
    link.unlink(missing_ok=True)
    link.symlink_to(DATA_FILE)
    try:
        write_shards([link], species, shard_dir, cells_per_shard=cells_per_shard, gene_col=GENE_COL)
    finally:
        link.unlink()
    log.info("%s: sharded into %s", ds.dataset_id, shard_dir)
    return True


PRIMARY = "is_primary_data == True"
CENSUS_GENE_COL = "feature_id"  # the Census's var column of Ensembl ids


def shard_from_census(client: PortalClient, species: list[str], output_dir: str | os.PathLike, *,
                      obs_filter: str | None = None, cells_per_shard: int = 10_000,
                      processes: int | None = None) -> dict:
    """Stream each species' cells from the client's TileDB-SOMA experiment straight into shards at
    OUTPUT/shards/<species>/census/, with no source h5ad downloaded. The cells are the primary ones
    (``is_primary_data == True``), or those ``obs_filter`` selects. A re-run completes what an
    interrupted one left (tfx shard's resume)."""
    from tfx.data.shards import MANIFEST, write_shards
    from tfx.data.soma import SomaSource

    species = parse_species(species)
    _check_shard_species(species)
    out = Path(output_dir)
    value_filter = obs_filter if obs_filter and obs_filter.strip() else PRIMARY
    written = {}
    for sp in species:
        source = client.experiment(sp)
        source = SomaSource(source.uri, source.measurement, value_filter, source.config)
        shard_dir = out / SHARDS / sp / "census"
        summary = write_shards([source], sp, shard_dir, cells_per_shard=cells_per_shard, processes=processes,
                               gene_col=CENSUS_GENE_COL, measurement=source.measurement, obs_filter=value_filter)
        written[sp] = {"cells": summary["cells"], "shards": summary["shards"], "manifest": str(shard_dir / MANIFEST)}
        log.info("%s: %d cells in %d shards at %s", sp, summary["cells"], summary["shards"], shard_dir)
    return {"output": str(out), "obs_filter": value_filter, "species": written}
