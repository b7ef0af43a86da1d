"""One inference split across processes: which process this one is (a torchrun or srun rank), the
fixed chunks the cells are cut into, and the chunk files the processes write beside the output.

A chunk file is written under a temporary name and renamed, so a process killed mid-run leaves only
whole chunks. Each file records the key of the run that wrote it (input, checkpoint, options): a
re-run with the same key computes only the chunks missing, one with another key recomputes them.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfx.atomic import atomic_path
from tfx.errors import InputError


@dataclass(frozen=True)
class Rank:
    """This process's place in a launch: ``rank`` of ``world`` processes, ``local`` on its node."""

    rank: int = 0
    world: int = 1
    local: int = 0


def launched(env=os.environ) -> Rank:
    """The rank torchrun (WORLD_SIZE, RANK, LOCAL_RANK) or srun (SLURM_STEP_NUM_TASKS, SLURM_PROCID,
    SLURM_LOCALID) gave this process; a lone process is rank 0 of 1. srun sets SLURM_STEP_NUM_TASKS
    in a job step only, so a batch script's own commands are not mistaken for ranks."""
    names = (("RANK", "WORLD_SIZE", "LOCAL_RANK") if "WORLD_SIZE" in env else
             ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID") if "SLURM_STEP_NUM_TASKS" in env else None)
    if names is None:
        return Rank()
    try:
        rank = Rank(int(env[names[0]]), int(env[names[1]]), int(env.get(names[2], 0)))
    except (KeyError, ValueError):
        rank = None
    if rank is None or not 0 <= rank.rank < rank.world:
        shown = ", ".join(f"{n}={env.get(n)!r}" for n in names)
        raise InputError(f"the launch environment is not a rank of a world ({shown}); launch with torchrun or srun")
    return rank


def plan(n_cells: int, size: int) -> list[tuple[int, int]]:
    """Rows 0..n_cells in chunks of ``size`` (the last may be shorter), as (start, stop)."""
    return [(start, min(start + size, n_cells)) for start in range(0, n_cells, size)]


def parts_dir(output: Path) -> Path:
    """Where the chunks of ``output`` are written: beside it, so every node sees it when the output's
    file system is shared, and a re-run of the same command finds it."""
    return output.with_name(f"{output.name}.parts")


def _path(parts: Path, chunk: tuple[int, int]) -> Path:
    return parts / f"{chunk[0]:012d}-{chunk[1]:012d}.npz"


def save_chunk(parts: Path, chunk: tuple[int, int], key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write one chunk's arrays with ``key``, atomically."""
    with atomic_path(_path(parts, chunk)) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
        np.savez(f, key=np.array(key), **arrays)


def load_chunk(parts: Path, chunk: tuple[int, int]) -> dict[str, np.ndarray]:
    with np.load(_path(parts, chunk)) as f:
        return {name: f[name] for name in f.files if name != "key"}


def missing(parts: Path, chunks: list[tuple[int, int]], key: str) -> list[tuple[int, int]]:
    """The chunks without a file of ``key``: absent, written by another run, or unreadable."""
    return [chunk for chunk in chunks if _key(_path(parts, chunk)) != key]


def _key(path: Path) -> str | None:
    try:
        with np.load(path) as f:
            return str(f["key"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def run_key(**identity) -> str:
    """A chunk's key: what its numbers depend on, as JSON."""
    return json.dumps(identity, sort_keys=True, default=str)
