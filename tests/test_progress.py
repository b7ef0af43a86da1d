"""Long work shows progress: with stderr going to a file (a log, a batch job, CI), each long
command writes a progress line at least every TFX_LOG_EVERY_S seconds (30 by default)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import write_h5ad
from teacher import build_teacher

INTERVAL = 0.5


def _run_logged(tmp_path, *argv) -> tuple[list[float], str]:
    """Run ``tfx argv`` with stderr to a file; the times (from the start) at which lines arrived."""
    log = tmp_path / "stderr.log"
    env = {**os.environ, "TFX_LOG_EVERY_S": str(INTERVAL)}
    arrivals, seen = [], 0
    with open(log, "w") as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "tfx.cli", *map(str, argv)], stderr=err,
                                stdout=subprocess.DEVNULL, env=env)
        while proc.poll() is None:
            time.sleep(0.05)
            lines = log.read_text().count("\n")
            arrivals += [time.monotonic() - start] * (lines - seen)
            seen = lines
    assert proc.returncode == 0, log.read_text()
    return arrivals, log.read_text()


def _longest_silence(arrivals: list[float], text: str, pattern: str) -> float:
    """The longest gap between lines once the work has started (its first progress line)."""
    assert re.search(pattern, text), text
    first = next(i for i, line in enumerate(text.splitlines()) if "tfx.progress" in line or re.search(pattern, line))
    return max(np.diff(arrivals[first:]), default=0.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return build_teacher(tmp_path_factory.mktemp("progress") / "ckpt", n_genes=200, seq_len=512, end_bias=-30.0)


def test_generate_logs_progress_while_sampling(teacher, tmp_path):
    arrivals, text = _run_logged(tmp_path, "generate", "--checkpoint", teacher, "--species", "synth_alpha",
                                 "--n-cells", "64", "--output", tmp_path / "g.h5ad", "--device", "cpu")
    silence = _longest_silence(arrivals, text, r"sample 64 cells: .*\d+/\d+")
    assert len(re.findall(r"sample 64 cells: ", text)) > 4  # long enough for the check to mean something
    assert silence < 6 * INTERVAL  # a line at least every interval, with room for a loaded machine


def test_programmes_log_progress_per_type_and_while_sampling(teacher, tmp_path):
    genes = [f"SYNTH_ALPHA_{i:05d}" for i in range(200)]
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": ["a", "b", "c"] * 10}, index=[f"c{i}" for i in range(30)])
    data = write_h5ad(tmp_path / "cells.h5ad", genes, rng.integers(0, 4, (30, 200)), obs)
    arrivals, text = _run_logged(tmp_path, "prompt", "programmes", "--checkpoint", teacher, "--species",
                                 "synth_alpha", "--data", data, "--candidates", ",".join(genes[:20]),
                                 "--cells", "16", "--output", tmp_path / "pp")
    silence = _longest_silence(arrivals, text, r"programmes: .*\d/3")
    assert silence < 6 * INTERVAL
