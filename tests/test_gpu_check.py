"""tools/gpu_check.py, the one command a lent GPU runs, proven on CPU: its dry run goes through every
step and writes both reports, each version whole, so a kill at any instant leaves valid JSON with the
steps already done; SIGTERM writes what is done and exits 128 + 15."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "inference", "training", "zero2", "generation"]


@pytest.fixture
def start():
    """Starts the dry run (this checkout's tfx in every child, scratch inside tmp_path); whatever a
    failed test leaves running is killed (its current child dies with it)."""
    procs = []

    def _start(out: Path, *args: str) -> subprocess.Popen:
        path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        cmd = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(out),
               "--work", str(out.parent / "work"), *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "PYTHONPATH": os.pathsep.join(path)}))
        return procs[-1]

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _leaves(figures):
    """Every figure's value (nested dicts flattened)."""
    for value in figures.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


def _measured(value) -> bool:
    """A number (or a yes/no, a version, a name), or a figure marked not applicable on CPU."""
    return value is not None and value != "" and not (isinstance(value, float) and value != value)


@pytest.mark.slow
def test_dry_run_goes_through_every_step(tmp_path, start):
    proc = start(tmp_path / "out", "--budget-s", "3000")
    seen = _watch(tmp_path / "out" / "gpu_check.json", proc, timeout=3600)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, log[-3000:]
    # what a SIGKILL at that instant leaves: the finished step whole, the one running marked, the rest pending
    assert any(r["steps"]["environment"]["status"] == "ok" and r["steps"]["inference"]["status"] == "running"
               and r["steps"]["generation"]["status"] == "pending" for r in seen), [r["steps"] for r in seen[:5]]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step)
        assert f"## {name}: ok" in md
        assert step["figures"] and all(_measured(v) for v in _leaves(step["figures"])), (name, step["figures"])
    env, infer, train = (report["steps"][k]["figures"] for k in ("environment", "inference", "training"))
    gen, zero = report["steps"]["generation"]["figures"], report["steps"]["zero2"]["figures"]
    assert env["device"] == "cpu" and env["flex_attention"]["compiles"] is True
    # tfx against the reference on the same cells and weights: the same embeddings
    for key in ("cosine_tfx_16-mixed_vs_reference", "cosine_tfx_bf16-mixed_vs_reference",
                "cosine_tfx_32_subset_vs_reference_32_subset"):
        assert infer[key]["min"] > 0.99, (key, infer[key])
    assert infer["tfx_16-mixed"]["cells_per_s"] > 0 and infer["reference"]["cells_per_s"] > 0
    assert "speedup_whole_process" in infer and "marginal_cells_per_s" in infer["tfx_16-mixed"]
    # training: the ThroughputMonitor's figures of both batch modes; flex is marked not applicable on CPU
    assert train["flex"].startswith("n/a on CPU")
    for mode in ("padded", "packed"):
        run = train["eager"][mode]
        assert 0 < run["useful_tokens_per_s"] < run["tokens_per_s"] and run["step"] >= 10
        assert 0 < run["mfu"] < 1 and run["peak_gib"].startswith("n/a on CPU")  # MFU of a nominal 1 TFLOP/s
    assert train["eager"]["packed_over_padded"] > 0
    assert zero["infer_finite"] is True and zero["infer_cells"] == report["sizes"]["subset"] and zero["export_mib"] > 0
    assert zero["train"]["useful_tokens_per_s"] > 0
    cached = gen["cache_vs_recompute"]
    assert cached["genes_drawn_identically"] > 0.99 and cached["cached_cells_per_s"] > 0
    assert gen["tfx_generate"]["cells_per_s_whole_process"] > 0


def _watch(path: Path, proc: subprocess.Popen, until=lambda report: False, timeout: float = 900) -> list[dict]:
    """Every version of the report read until ``until(report)`` or the process ends. Every read must
    parse, and a report once visible must never change in place (each version is a new file renamed
    over the old), which is what lets a kill at any instant leave a whole report. Each version read
    is held open, so that its inode number cannot be reused by a later one."""
    deadline, held, seen = time.monotonic() + timeout, {}, []
    try:
        while time.monotonic() < deadline:
            running = proc.poll() is None
            try:
                f = open(path)
            except FileNotFoundError:
                assert running, proc.communicate()[0][-3000:]
                time.sleep(0.01)
                continue
            inode, text = os.fstat(f.fileno()).st_ino, f.read()
            if inode in held:
                f.close()
                assert text == held[inode][1], "the report was rewritten in place: a kill mid-write would tear it"
            else:
                held[inode] = (f, text)
                seen.append(json.loads(text))
                if until(seen[-1]):
                    return seen
            if not running:
                return seen
            time.sleep(0.01)
        raise AssertionError(f"{path} never reached the state waited for")
    finally:
        for f, _ in held.values():
            f.close()


def test_sigterm_writes_what_is_done_and_exits_143(tmp_path, start):
    """Sent while the first step runs (the handler is the same for every step)."""
    out = tmp_path / "out"
    proc = start(out, "--budget-s", "3000")
    try:
        _watch(out / "gpu_check.json", proc, lambda r: r["steps"]["environment"]["status"] == "running")
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-2000:]
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert steps["environment"]["status"] == "interrupted: SIGTERM"
    assert [steps[k]["status"] for k in STEPS[1:]] == ["not run: interrupted"] * 4
    assert "## environment: interrupted: SIGTERM" in (out / "gpu_check.md").read_text()
    assert not list(out.glob(".*.tmp"))


def test_a_budget_too_small_skips_every_step(tmp_path, start):
    proc = start(tmp_path / "out", "--budget-s", "3")
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [report["steps"][k]["status"] for k in STEPS] == ["skipped: budget"] * 5
    assert "## zero2: skipped: budget" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_a_step_is_cut_at_its_share_and_the_next_runs(tmp_path, start):
    """60 s: the environment step's 6 s cannot hold a flex_attention compile on CPU, so the step ends
    as a timeout, and the steps after it still run in the time left."""
    proc = start(tmp_path / "out", "--budget-s", "60")
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    steps = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]
    assert steps["environment"]["status"] == "timeout", steps["environment"]
    assert "share" in steps["environment"]["error"]  # cut, or left no time for its next command
    assert steps["inference"]["status"] in ("timeout", "ok"), steps["inference"]  # it was reached
    assert all(step["status"] in ("ok", "timeout", "skipped: budget") for step in steps.values()), steps
