"""`tfx infer` across nodes: two torchrun launchers of two CPU processes each (gloo, 127.0.0.1) split
the cells of two h5ad files or a SOMA query, and rank 0 writes the output a single process writes; a rank
killed mid-run leaves its finished chunks, and the same command run again computes only the rest."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

import reference
from conftest import write_h5ad
from tfx.cli import main
from tfx.errors import InputError
from tfx.infer.parts import Rank, launched, missing, save_chunk

GENES = [f"ENSSYN{i:011d}" for i in range(120)]
OPTIONS = ["--device", "cpu", "--outputs", "embeddings,llh"]
pytestmark = pytest.mark.usefixtures("one_blas_thread")  # the one-process runs; torchrun gives each rank one thread
CLOSE = dict(rtol=1e-4, atol=1e-4)  # across processes, as tests/test_infer.py's --devices test says why


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return reference.build_reference_checkpoint(tmp_path_factory.mktemp("nodes") / "ckpt",
                                                {"synthetic": GENES[:100]}, seq_len=31, seed=1)


def _cells(n: int, seed: int = 0) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, len(GENES))) < 0.15) * rng.integers(1, 30, size=(n, len(GENES)))
    x[5] = 0  # a cell without any expressed gene
    obs = pd.DataFrame({"assay": ["10x 3' v3"] * n, "tissue": rng.choice(["lung", "blood"], n)},
                       index=[f"c{i}" for i in range(n)])
    return anndata.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame({"ensembl_id": GENES}, index=GENES))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    """This environment with ``extra``, importing this tree's tfx."""
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def _nodes(args: list[str], port: int, nodes: int = 2, logs: Path | None = None) -> list[subprocess.Popen]:
    """``nodes`` torchrun launchers of two processes each, one world over 127.0.0.1; with ``logs``, each
    process's stderr goes to a file of its own there."""
    own = ["--log-dir", str(logs), "--redirects", "2"] if logs else []
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank",
                              str(node), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                              str(port), *own, "-m", "tfx.cli", "infer", *args], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for node in range(nodes)]


def _wait(launchers: list[subprocess.Popen]) -> str:
    try:
        return "".join(p.communicate(timeout=300)[0] for p in launchers)
    finally:
        for p in launchers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def _assert_same(one: Path, many: Path, key: str = "embeddings") -> None:
    a, b = anndata.read_h5ad(one), anndata.read_h5ad(many)
    assert list(b.obs_names) == list(a.obs_names)
    np.testing.assert_allclose(b.obs["llh"], a.obs["llh"], **CLOSE)
    if key == "embeddings":
        np.testing.assert_allclose(b.obsm["embeddings"], a.obsm["embeddings"], **CLOSE)
    else:
        for name in ("cge_cell_indices", "cge_gene_names"):
            np.testing.assert_array_equal(b.uns[name], a.uns[name])
        np.testing.assert_allclose(b.uns["cge_embeddings"], a.uns["cge_embeddings"], **CLOSE)


def test_the_rank_comes_from_torchrun_or_srun():
    assert launched({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Rank(3, 4, 1)
    assert launched({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}) == Rank(5, 8, 1)
    # srun starting torchrun: torchrun's ranks count
    assert launched({"WORLD_SIZE": "8", "RANK": "2", "LOCAL_RANK": "2", "SLURM_STEP_NUM_TASKS": "2",
                     "SLURM_PROCID": "0"}) == Rank(2, 8, 2)
    # the batch script itself (sbatch --ntasks 8, no srun) is one process
    assert launched({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) == Rank()
    for env in ({"WORLD_SIZE": "4"}, {"WORLD_SIZE": "4", "RANK": "x"}, {"WORLD_SIZE": "2", "RANK": "2"},
                {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "-1"}):
        with pytest.raises(InputError, match=r"^the launch environment is not a rank of a world"):
            launched(env)


class _FailsMidWrite:
    def __array__(self, *args, **kwargs):
        raise OSError("No space left on device")


def test_a_chunk_counts_as_done_only_when_whole_and_of_the_same_run(tmp_path):
    whole, broken = (0, 4), (4, 8)
    save_chunk(tmp_path, whole, "run", {"embeddings": np.ones((4, 3), np.float32)})
    with pytest.raises(OSError):  # the write stops after the key and the embeddings
        save_chunk(tmp_path, broken, "run", {"embeddings": np.ones((4, 3), np.float32), "llh": _FailsMidWrite()})
    assert len(list(tmp_path.glob("*.npz"))) == 1  # no chunk file under its name but the whole one
    assert missing(tmp_path, [whole, broken], "run") == [broken]
    assert missing(tmp_path, [whole], "another run") == [whole]  # another input, checkpoint or options


@pytest.mark.slow
@pytest.mark.parametrize("source", ["h5ad", "soma"])
def test_two_nodes_of_two_processes_write_what_one_process_writes(ckpt, tmp_path, source):
    adata = _cells(90)
    args = ["--checkpoint", str(ckpt), *OPTIONS, "--chunk-size", "7"]
    if source == "h5ad":  # cell embeddings of every cell of two files (rows 49..56 span both)
        adata[:52].copy().write_h5ad(tmp_path / "a.h5ad")
        adata[52:].copy().write_h5ad(tmp_path / "b.h5ad")
        data, query, key = [str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")], [], "embeddings"
    else:  # contextual gene embeddings of a SOMA query's cells
        tiledbsoma_io = pytest.importorskip("tiledbsoma.io")
        uri = tiledbsoma_io.from_anndata(str(tmp_path / "experiment"), adata, measurement_name="RNA")
        data, query, key = [uri], ["--obs-filter", "tissue == 'lung'", "--emb-type", "cge"], "cge"
    assert main(["infer", *args, "--data", *data, *query, "--output", str(tmp_path / "one.h5ad")]) == 0
    nodes = 2 if source == "h5ad" else 1  # the SOMA query's split needs ranks, not a second node
    log = _wait(_nodes([*args, "--data", *data, *query, "--output", str(tmp_path / "many.h5ad")], _free_port(), nodes))
    assert "all ranks: 0 of " in log, log[-3000:]
    _assert_same(tmp_path / "one.h5ad", tmp_path / "many.h5ad", key)
    assert not (tmp_path / "many.h5ad.parts").exists()  # assembled, then removed


def _pid_of_rank(rank: int, port: int) -> int | None:
    """The process torchrun started as ``rank`` of the world at ``port`` (from its environment)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(item.split("=", 1) for item in environ.read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("MASTER_PORT") == str(port) and env.get("RANK") == str(rank):
            return int(environ.parent.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_leaves_its_chunks_and_the_same_command_computes_only_the_rest(ckpt, tmp_path):
    data = tmp_path / "in.h5ad"
    _cells(1200).write_h5ad(data)
    out, parts, size = tmp_path / "two.h5ad", tmp_path / "two.h5ad.parts", 6
    args = ["--checkpoint", str(ckpt), "--data", str(data), *OPTIONS, "--chunk-size", str(size), "--output", str(out)]
    assert main(["infer", *args[:-1], str(tmp_path / "one.h5ad")]) == 0

    port = _free_port()
    launchers = _nodes(args, port, nodes=1)
    first_of_rank_1 = parts / f"{size:012d}-{2 * size:012d}.npz"
    deadline = time.monotonic() + 240
    while not first_of_rank_1.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert first_of_rank_1.exists(), _wait(launchers)[-3000:]
    os.kill(_pid_of_rank(1, port), signal.SIGKILL)
    log = _wait(launchers)
    assert any(p.returncode != 0 for p in launchers) and not out.exists(), log[-3000:]
    total = 1200 // size
    left = sorted(p.name for p in parts.glob("*.npz"))
    assert 0 < len(left) < total, (len(left), log[-3000:])

    log = _wait(_nodes(args, _free_port(), nodes=1))
    assert f"all ranks: {len(left)} of {total} chunks already done, computing {total - len(left)}" in log, log[-3000:]
    assert len(re.findall(r"rank \d of 2: \d+ of 100 chunks already done", log)) == 2
    _assert_same(tmp_path / "one.h5ad", out)
    assert not parts.exists()


@pytest.mark.slow
def test_every_rank_refuses_bad_input_in_one_line(ckpt, tmp_path):
    """An existing output (no --overwrite) is refused by every rank before any work; NaN counts in one
    rank's rows stop that rank with its error and the other with one naming it."""
    adata = _cells(40)
    adata.X[30, 2] = np.nan  # row 30: the second chunk of 20, rank 1's
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "in.h5ad"), *OPTIONS, "--chunk-size", "20"]
    write_h5ad(tmp_path / "old.h5ad", GENES[:3], np.ones((2, 3)))
    _wait(_nodes([*args, "--output", str(tmp_path / "old.h5ad")], _free_port(), nodes=1, logs=tmp_path / "a"))
    for err in _stderr(tmp_path / "a"):
        assert len(err) == 1 and err[0].startswith("tfx infer: error: --output") and "--overwrite" in err[0], err
    assert not (tmp_path / "old.h5ad.parts").exists()

    _wait(_nodes([*args, "--output", str(tmp_path / "o.h5ad")], _free_port(), nodes=1, logs=tmp_path / "b"))
    rank0, rank1 = _stderr(tmp_path / "b")
    assert len(rank1) == 1 and "NaN" in rank1[0] and "in.h5ad" in rank1[0], rank1
    assert len(rank0) == 1 and "1 other rank(s) failed" in rank0[0], rank0
    assert not (tmp_path / "o.h5ad").exists()


def _stderr(logs: Path) -> list[list[str]]:
    """Each rank's stderr lines that are not log records, in local rank order."""
    files = sorted(logs.glob("*/attempt_0/*/stderr.log"), key=lambda p: int(p.parent.name))
    assert len(files) == 2, list(logs.rglob("*"))
    return [[line for line in f.read_text().splitlines() if line and not line.startswith(("INFO ", "WARNING "))]
            for f in files]


@pytest.mark.slow
def test_srun_ranks_without_torchrun_write_what_one_process_writes(ckpt, tmp_path):
    """Plain srun: the ranks come from SLURM_PROCID / SLURM_STEP_NUM_TASKS, and meet at MASTER_ADDR."""
    _cells(30).write_h5ad(tmp_path / "in.h5ad")
    args = ["infer", "--checkpoint", str(ckpt), "--data", str(tmp_path / "in.h5ad"), *OPTIONS, "--chunk-size", "4"]
    assert main([*args, "--output", str(tmp_path / "one.h5ad")]) == 0

    def task(rank: int, **meet):
        env = _env(SLURM_STEP_NUM_TASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        env |= meet
        return subprocess.Popen([sys.executable, "-m", "tfx.cli", *args, "--output", str(tmp_path / "two.h5ad")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    alone = task(0).communicate(timeout=120)
    assert alone[1].strip().splitlines() == [
        "tfx infer: error: under srun without torchrun, set MASTER_ADDR (the first node's address) and MASTER_PORT "
        "for the ranks to meet (docs/recipes.md)"]
    meet = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    tasks = [task(rank, **meet) for rank in (0, 1)]
    done = [t.communicate(timeout=300) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], done
    assert done[0][0].startswith("wrote ") and done[1][0] == ""  # rank 0 writes the output
    _assert_same(tmp_path / "one.h5ad", tmp_path / "two.h5ad")
