"""Every option is declared once: the `tfx` flags, the command dataclasses' fields and the Python
API's parameters are one set, a bad value is refused with the same words at both doors before any
work, and a programming error keeps its traceback."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest

import tfx
from conftest import ROOT
from tfx.cli import build_parser, main
from tfx.errors import InputError, RegistryError
from tfx.eval.run import EvalCommand
from tfx.generate.run import GenerateCommand
from tfx.infer.run import InferCommand
from tfx.options import flat_specs

COMMANDS = {  # command: its options dataclass; the Python functions taking the same options (None: all their arguments)
    "infer": (InferCommand, {tfx.load: None, tfx.embed: None}),
    "generate": (GenerateCommand, {tfx.load: {"path", "attention"}, tfx.generate_cells: None}),
    "eval": (EvalCommand, {tfx.evaluate: None}),
}

def _subparser(command: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_fields_and_python_parameters_are_one_set(command):
    cls, functions = COMMANDS[command]
    specs = {s.name: s for s in flat_specs(cls)}
    actions = {a.dest: a for a in _subparser(command)._actions if a.dest != "help"}
    assert set(actions) == set(specs), "each flag is a field of the command's dataclass, and each field a flag"
    for name, action in actions.items():
        assert tuple(action.option_strings) == specs[name].flags, name  # names and aliases as declared
    params = {fn.__name__: {name: p for name, p in inspect.signature(fn).parameters.items()
                            if names is None or name in names} for fn, names in functions.items()}
    python = {p: s for s in specs.values() for p in s.python}  # a field's Python names (CLI-only fields: none)
    assert set(python) == set().union(*params.values()), "the fields' Python names are the API's parameters"
    for fn, parameters in params.items():  # the same defaults where the name is the same
        for name, p in parameters.items():
            spec = python[name]
            if spec.name == name and p.default is not inspect.Parameter.empty:
                assert p.default == spec.default, (fn, name)
    cli_only = [s.name for s in specs.values() if not s.python]
    assert cli_only == {"infer": ["output_path", "output_filename", "overwrite", "devices"],
                        "generate": ["output", "overwrite"],
                        "eval": ["homology", "homology_threshold"]}[command]


CASES = [  # command, flag, text; the Python function and its arguments
    ("infer", "--emb-type", "gene", tfx.embed, {"emb_type": "gene"}),
    ("infer", "--precision", "8", tfx.embed, {"precision": "8"}),
    ("infer", "--device", "tpu", tfx.embed, {"device": "tpu"}),
    ("infer", "--batch-size", "0", tfx.embed, {"batch_size": 0}),
    ("infer", "--outputs", "embeddings,lhh", tfx.embed, {"outputs": ("embeddings", "lhh")}),
    ("infer", "--use-raw", "maybe", tfx.embed, {"use_raw": "maybe"}),
    ("infer", "--clip-counts", "nan", tfx.load, {"clip_counts": float("nan")}),
    ("generate", "--seed", "-1", tfx.generate_cells, {"seed": -1}),
    ("generate", "--seed", "1180591620717411303424", tfx.generate_cells, {"seed": 1180591620717411303424}),
    ("generate", "--temperature", "0", tfx.generate_cells, {"temperature": 0}),
    ("generate", "--top-k", "0", tfx.generate_cells, {"top_k": 0}),
    ("generate", "--order", "random", tfx.generate_cells, {"order": "random"}),
    ("eval", "--seed", "-1", tfx.evaluate, {"seed": -1}),
    ("eval", "--maps", "tsne", tfx.evaluate, {"maps": "tsne"}),
]
BASE = {
    "infer": ["--checkpoint", "ck", "--data", "in.h5ad", "--output", "out.h5ad"],
    "generate": ["--checkpoint", "ck", "--species", "x", "--n-cells", "2", "--output", "out.h5ad"],
    "eval": ["--embeddings", "e.h5ad", "--output", "report"],
}
POSITIONAL = {"load": ["nowhere"], "embed": [None, None], "generate_cells": [None, "x", 2], "evaluate": [None]}


@pytest.mark.parametrize("command, flag, text, fn, kwargs", CASES, ids=[f"{c[0]} {c[1]} {c[2]}" for c in CASES])
def test_a_bad_value_gets_the_same_words_from_the_cli_and_the_api(command, flag, text, fn, kwargs, capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is read or written: the inputs named do not exist
    assert main([command, *BASE[command], flag, text]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    cli = re.search(rf"error: argument {flag}(?:, \S+)?: (.*) \(see tfx {command} --help\)$", err).group(1)
    (name,) = kwargs
    with pytest.raises(InputError) as refused:  # before any work: the model and data passed are not even real
        fn(*POSITIONAL[fn.__name__], **kwargs)
    assert str(refused.value) == f"{name}: {cli}"


def test_the_api_refuses_a_path_for_a_model_and_other_wrong_objects():
    import anndata
    import numpy as np

    adata = anndata.AnnData(np.ones((3, 2), np.float32))
    with pytest.raises(InputError, match=r"^model: expected a checkpoint loaded by tfx.load\(path\), got str; "
                                         r"pass tfx.load\('ckpt/dir'\)$"):
        tfx.embed(adata, "ckpt/dir")
    with pytest.raises(InputError, match=r"^adata: expected an AnnData, got str"):
        tfx.evaluate("cells.h5ad")
    with pytest.raises(InputError, match=r"^model: expected a checkpoint"):
        tfx.generate_cells("ckpt/dir", "homo_sapiens", 3)
    adata.obsm["X_tfx"] = np.ones((3, 2), np.float32)
    adata.obs["cell_type"] = ["a", "b", "a"]
    with pytest.raises(InputError, match=r"^model: the ESM2-CE baseline is computed from the cells' counts"):
        tfx.evaluate(adata, model="ckpt")


def test_generate_defaults_to_the_device_infer_uses():
    actions = {c: {a.dest: a for a in _subparser(c)._actions} for c in ("infer", "generate")}
    assert actions["generate"]["device"].default == actions["infer"]["device"].default == "auto"
    assert inspect.signature(tfx.generate_cells).parameters["device"].default == "auto"


def test_a_programming_error_keeps_its_traceback_and_a_registry_miss_is_one_line(monkeypatch, capsys):
    from tfx.registry import ATTENTION

    def broken(opts):
        return {}["a bug"]

    monkeypatch.setattr("tfx.cli.cmd_registry", broken)
    with pytest.raises(KeyError):
        main(["registry"])
    with pytest.raises(RegistryError, match=r"^unknown attention backend 'nope' \(registered: ") as miss:
        ATTENTION.get("nope")
    assert isinstance(miss.value, KeyError) and str(miss.value).startswith("unknown")  # no KeyError quotes


def test_only_the_command_run_is_imported():
    code = ("import sys; from tfx.cli import build_parser; build_parser('synth').parse_args(['synth', '--output', 'd']);"
            " print(sorted(m for m in ('torch', 'tfx.infer', 'tfx.eval', 'tfx.generate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_the_tfx_script_makes_openmp_threads_sleep_unless_the_user_chose(preset):
    """OMP_WAIT_POLICY=PASSIVE before torch starts its pool: spinning threads cost many times the work
    on a shared machine (tools/bench/threads.py). A policy the user set is kept."""
    show = ("import os, sys; sys.argv = ['tfx', 'registry', '--help']; from tfx.cli import entry\n"
            "try:\n    entry()\nexcept SystemExit:\n    print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": preset} if preset else {})
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.split()[-2:] == [preset or "PASSIVE", "False"], out.stdout + out.stderr
