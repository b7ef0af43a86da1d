"""The registry, and a third-party plugin installed from a fixture package and used by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, random_cells, tiny_model
from tfx.errors import ConfigError
import tfx.registry
from tfx.registry import LIKELIHOODS, REGISTRIES, Registry, load_plugins
from tfx.tokenize import collate

FIXTURE = Path(__file__).parent / "fixtures" / "tfx_plugin_demo"


def test_registry_builds_by_name_and_names_what_it_knows():
    reg = Registry("widget")

    @reg.register("square")
    def square(x):
        return x * x

    assert reg.build("square", x=3) == 9
    assert "square" in reg and reg.names() == ["square"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("square", lambda x: x)
    with pytest.raises(ConfigError, match=r"^unknown widget 'cube' \(registered: square\)$"):  # a tfx error, one line
        reg.get("cube")


def test_unknown_likelihood_in_a_config_fails_before_compute():
    with pytest.raises(ConfigError, match="unknown likelihood 'zinb'"):
        tiny_model(likelihood="zinb")


def test_a_registry_loads_its_built_in_entries_itself():
    """Whoever asks first, a registry answers for tfx's own components: in a fresh process nothing has
    imported tfx.train, and the objectives, strategies and loggers are there all the same."""
    code = ("import sys; from tfx.registry import LOGGERS, OBJECTIVES, STRATEGIES; "
            "print(OBJECTIVES.names(), 'deepspeed_zero2' in STRATEGIES, LOGGERS.get('wandb').__module__, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'deepspeed')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split("\n")[0] == "['continue', 'finetune', 'pretrain'] True tfx.train.loggers []"


@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
def test_declared_built_ins_are_what_their_modules_register():
    """The names each registry declares beside a module are exactly those its import registers, with that
    module as their origin. In a fresh process each module is imported in turn; the names it adds must be
    those declared for it and for the declared modules it imported along the way."""
    code = """
import importlib, json, sys
from tfx.registry import REGISTRIES
modules = sorted({m for r in REGISTRIES.values() for m in r.builtins.values()})
problems = []
for module in modules:
    before, imported = {k: set(r._entries) for k, r in REGISTRIES.items()}, set(sys.modules)
    importlib.import_module(module)
    for kind, r in REGISTRIES.items():
        added = set(r._entries) - before[kind]
        declared = {n for n, m in r.builtins.items() if m in set(sys.modules) - imported}
        if added != declared:
            problems.append([module, kind, sorted(added - declared), sorted(declared - added)])
wrong_origin = [n for r in REGISTRIES.values() for n, m in r.builtins.items() if r._entries[n][1] != m]
print(json.dumps([modules, problems, wrong_origin]))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    modules, problems, wrong_origin = json.loads(out.splitlines()[-1])
    assert "tfx.model.likelihoods" in modules and "tfx.synth" in modules
    assert problems == []  # [module, registry, registered but not declared, declared but not registered]
    assert wrong_origin == []


def test_tfx_registry_lists_every_component_without_importing_torch():
    code = ("import sys; from tfx.cli import main; rc = main(['registry']); "
            "print('HEAVY', sorted(m for m in ('torch', 'anndata', 'lightning') if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "HEAVY []"
    listed = {tuple(line.split()) for line in done.stdout.splitlines() if line.startswith("  ")}
    assert listed == {(n, m) for r in REGISTRIES.values() for n, m in r.builtins.items()}


def test_a_built_in_is_listed_unimported_and_replaced_only_with_override(tmp_path, monkeypatch):
    """Declared names answer without importing their module; registering one of them imports the built-in
    first, so another object takes its place only with override=True, as when built-ins loaded eagerly."""
    reg = Registry("widget", {"widget_builtins": ("square",)})
    monkeypatch.setattr(tfx.registry, "WIDGETS", reg, raising=False)
    (tmp_path / "widget_builtins.py").write_text(
        "from tfx.registry import WIDGETS\nWIDGETS.register('square', lambda x: x * x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "widget_builtins", raising=False)

    assert "square" in reg and reg.names() == ["square"] and reg.origin("square") == "widget_builtins"
    assert "widget_builtins" not in sys.modules
    with pytest.raises(ValueError, match="'square' is already registered by widget_builtins; pass override=True"):
        reg.register("square", lambda x: x)
    assert reg.build("square", x=3) == 9
    reg.register("square", lambda x: -x, override=True)
    assert reg.build("square", x=3) == -3 and reg.origin("square") == __name__


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """pip-install the fixture plugin package into its own site directory."""
    site = tmp_path_factory.mktemp("plugin_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(FIXTURE)],
        check=True, cwd=tmp_path_factory.mktemp("build"),
    )
    return site


def test_plugin_appears_in_tfx_registry(plugin_site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}  # this tfx, and the plugin
    out = subprocess.run([sys.executable, "-m", "tfx.cli", "registry"], env=env, check=True,
                         capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if "shifted_geometric" in l)
    assert "plugin tfx-plugin-demo" in line
    assert "ztp" in out and "flex" in out and "mus_musculus" in out


def test_plugin_likelihood_trains_and_evaluates_by_name(plugin_site, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(plugin_site))
    load_plugins(force=True)
    assert "shifted_geometric" in LIKELIHOODS

    model = tiny_model(likelihood="shifted_geometric").train()
    assert type(model.likelihood).__module__ == "tfx_plugin_demo"
    cells = random_cells(32, seed=2)
    batch = collate(cells, 1, 15, np.ones((32, 1), dtype=np.int64))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = model.losses(model(batch), batch)["count"].item()
    for _ in range(30):
        loss = model.losses(model(batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(batch, embed=True)
        nll = model.cell_nll(out, batch)
        last = model.losses(out, batch)["count"].item()
    assert last < first
    nonempty = np.array([len(ids) > 0 for ids, _ in cells])
    assert torch.isfinite(nll[nonempty]).all() and torch.isnan(nll[~nonempty]).all()


def test_membership_loads_plugins_as_get_does(plugin_site):
    """`name in REGISTRY` answers for plugins too, so every command accepts what `get` would build."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}  # this tfx, and the plugin
    code = "from tfx.registry import LIKELIHOODS; print('shifted_geometric' in LIKELIHOODS)"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "True"
