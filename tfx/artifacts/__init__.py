"""Fetching what tfx serves and trains on: the official release archives (`tfx download`) and
CELLxGENE datasets (`tfx download-data`)."""

from tfx.artifacts.download import (
    ARCHIVES,
    DEFAULT_BASE_URL,
    DownloadError,
    DownloadInterrupted,
    UnsafeArchiveError,
    download_artifacts,
)
from tfx.artifacts.portal import CensusPortal, Dataset, PortalClient, PortalError, download_data, shard_from_census

__all__ = [
    "ARCHIVES", "DEFAULT_BASE_URL", "CensusPortal", "Dataset", "DownloadError", "DownloadInterrupted",
    "PortalClient", "PortalError", "UnsafeArchiveError", "download_artifacts", "download_data",
    "shard_from_census",
]
