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

INTERVAL = 0.25  # short, so that a few seconds of work on a fast machine still log many lines
PATIENCE = 10.0  # the longest silence allowed: room for a loaded machine and a step that holds the GIL


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


@pytest.mark.slow
def test_generate_logs_progress_while_sampling(teacher, tmp_path):
    # free order and a suppressed [END]: each cell runs through all 200 genes, in batches of 64 cells
    arrivals, text = _run_logged(tmp_path, "generate", "--checkpoint", teacher, "--species", "synth_alpha",
                                 "--n-cells", "256", "--order", "free", "--output", tmp_path / "g.h5ad",
                                 "--device", "cpu")
    silence = _longest_silence(arrivals, text, r"sample 64 cells: .*\d+/\d+")
    assert len(re.findall(r"sample 64 cells: ", text)) > 8  # long enough for the check to mean something
    assert silence < PATIENCE


@pytest.mark.slow
def test_programmes_log_progress_per_type_and_while_sampling(teacher, tmp_path):
    genes = [f"SYNTH_ALPHA_{i:05d}" for i in range(200)]
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": ["a", "b", "c"] * 10}, index=[f"c{i}" for i in range(30)])
    data = write_h5ad(tmp_path / "cells.h5ad", genes, rng.integers(0, 4, (30, 200)), obs)
    arrivals, text = _run_logged(tmp_path, "prompt", "programmes", "--checkpoint", teacher, "--species",
                                 "synth_alpha", "--data", data, "--candidates", ",".join(genes[:20]),
                                 "--cells", "16", "--output", tmp_path / "pp")
    silence = _longest_silence(arrivals, text, r"programmes: .*\d/3")
    assert silence < PATIENCE


@pytest.mark.slow
def test_eval_logs_progress(eval_atlas, tmp_path):
    arrivals, text = _run_logged(tmp_path, "eval", "--embeddings", *eval_atlas["embeddings"], "--counts",
                                 *eval_atlas["counts"], "--label", "cell_type", "--batch", "species",
                                 "--no-cz-benchmarks", "--maps", "pca", "--output", tmp_path / "report")
    silence = _longest_silence(arrivals, text, r"eval: .*\d+/\d+")
    assert silence < PATIENCE


@pytest.mark.slow
def test_training_logs_steps_loss_throughput_and_time_left(eval_atlas, tmp_path):
    atlas = eval_atlas["root"] / "atlas"
    arrivals, text = _run_logged(tmp_path, "train", "pretrain/tiny", "data=h5ad",
                                 f"data.files=[{atlas / 'synth_alpha.h5ad'}]",
                                 f"vocab.embeddings=[{atlas / 'synth_alpha_gene.h5'}]", f"output_dir={tmp_path / 'run'}",
                                 "trainer.max_steps=30", "data.val_files=[]")
    lines = re.findall(r"train: step (\d+)/30, loss [\d.]+, \d+ tokens/s, \d+:\d\d:\d\d left", text)
    assert len(lines) >= 3 and lines[-1] == "30"
    assert "Epoch" not in text  # Lightning's bar stays off where stderr is no terminal
    assert "Tip:" not in text and "deprecat" not in text.lower(), text[-3000:]  # no library's adverts or notes
    assert _longest_silence(arrivals, text, r"train: step") < PATIENCE
