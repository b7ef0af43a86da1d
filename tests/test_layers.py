"""Imports run one way (the import-linter contracts in pyproject.toml), and the commands that do
not train stay light: no Lightning or DeepSpeed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, write_h5ad


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_no_undefined_or_unused_names():
    """pyflakes' checks (ruff's F rules) over the package, its tools and benchmarks and the tests: a
    benchmark that still names a moved class fails here, not when someone measures with it."""
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run([str(ruff), "check", "--select", "F", "--output-format", "concise", "--no-cache",
                           "tfx", "tools", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


HEAVY = ("lightning", "pytorch_lightning", "deepspeed")


def _help_commands() -> list[list[str]]:
    from tfx.cli import COMMANDS
    from tfx.generate.options import QUESTIONS

    return [[], *([c] for c in COMMANDS), *(["prompt", q] for q in QUESTIONS)]


@pytest.mark.parametrize("command", _help_commands(), ids=lambda c: " ".join(c) or "tfx")
def test_help_of_every_command_imports_no_torch(command):
    """--help answers at once: a command's parser is built from its options, declared apart from its code."""
    code = (f"import sys; from tfx.cli import main\ntry:\n    main({[*command, '--help']!r})\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'anndata', 'lightning') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: tfx" in done.stdout, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout


@pytest.mark.parametrize("command", ["registry", pytest.param("shard", marks=pytest.mark.slow)])  # shard imports torch: ~4 s
def test_commands_that_do_not_train_import_no_training_stack(command, tmp_path):
    args = ["registry"]
    if command == "shard":
        write_h5ad(tmp_path / "a.h5ad", ["ENSG1", "ENSG2", "ENSG3"], np.eye(3) * 4)
        args = ["shard", "--input", str(tmp_path / "a.h5ad"), "--species", "homo_sapiens", "--output",
                str(tmp_path / "shards"), "--processes", "1"]
    code = (f"import sys; from tfx.cli import main; rc = main({args!r}); "
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}); "
            "print('HEAVY', heavy); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout
    if command == "registry":  # strategies, loggers and objectives are listed all the same
        for name in ("deepspeed_zero2", "wandb", "finetune", "classification"):
            assert name in done.stdout
