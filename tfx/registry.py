"""The component registries: recipes and checkpoints name components, the registry builds them.

Configs only ever hold registry names, never import paths, so loading a config cannot run code.
Each registry declares its built-in entries by name, beside the tfx module whose import registers
them: listing names and ``name in registry`` import nothing (``tfx registry`` runs without torch),
and ``get`` imports an entry's module the first time it is used, so a registry answers for every
built-in component whoever asks, and no layer has to import a higher one for its side effects.
``tests/test_registry.py`` checks the declarations against what the modules register. Third-party
packages add components through the entry-point group ``tfx.plugins``: each entry point names a
module (or a callable) whose import registers its components.

A name nobody registered is a ``RegistryError`` (one line, exit 2) that names what is registered.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterator
from typing import Any

from tfx.errors import RegistryError

PLUGIN_GROUP = "tfx.plugins"

_plugin_origin: str | None = None  # set while a plugin's entry point is loading
_plugins_loaded = False


class Registry:
    """A named set of components of one kind (likelihoods, attention backends, ...).

    ``builtins``: module -> the names its import registers (tfx's own entries, imported on first use)."""

    def __init__(self, kind: str, builtins: dict[str, tuple[str, ...]] | None = None):
        self.kind = kind
        self.builtins = {name: module for module, names in (builtins or {}).items() for name in names}
        self._entries: dict[str, tuple[Any, str]] = {}

    def register(self, name: str, obj: Any = None, *, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, override=override)
        module = self.builtins.get(name)
        if module is not None and name not in self._entries and module not in sys.modules:
            importlib.import_module(module)  # the built-in first: anyone else replaces it only with override=True
        if name in self._entries and not override and self._entries[name][0] is not obj:
            raise ValueError(
                f"{self.kind} '{name}' is already registered by {self._entries[name][1]}; "
                "pass override=True to replace it"
            )
        # A built-in name is registered first by its own module (imported above), even while a plugin imports it.
        origin = module if module is not None and name not in self._entries else (
            _plugin_origin or getattr(obj, "__module__", "?"))
        self._entries[name] = (obj, origin)
        return obj

    def get(self, name: str) -> Any:
        load_plugins()  # first: a plugin may add the name, or replace a built-in
        if name not in self._entries and name in self.builtins:
            importlib.import_module(self.builtins[name])
        if name not in self._entries:
            raise RegistryError(f"unknown {self.kind} '{name}' (registered: {', '.join(self.names()) or 'none'})")
        return self._entries[name][0]

    def build(self, name: str, /, **kwargs) -> Any:
        return self.get(name)(**kwargs)

    def __contains__(self, name: str) -> bool:
        if name not in self._entries and name not in self.builtins:
            load_plugins()
        return name in self._entries or name in self.builtins

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries.keys() | self.builtins.keys())

    def origin(self, name: str) -> str:
        """Who registered ``name``: a tfx module, or the plugin; known without importing a built-in."""
        return self._entries[name][1] if name in self._entries else self.builtins[name]


SPECIES = Registry("species", {
    "tfx.vocab.species": ("homo_sapiens", "mus_musculus", "oryctolagus_cuniculus", "gallus_gallus", "xenopus_laevis",
                          "danio_rerio", "lytechinus_variegatus", "caenorhabditis_elegans", "drosophila_melanogaster",
                          "spongilla_lacustris", "saccharomyces_cerevisiae", "plasmodium_falciparum"),
    "tfx.synth": ("synth_alpha", "synth_beta", "synth_gamma", "synth_delta", "synth_epsilon", "synth_zeta",
                  "synth_eta", "synth_theta"),
})
TOKENIZERS = Registry("tokenizer", {"tfx.tokenize": ("var_order", "random", "expression_sorted")})
ATTENTION = Registry("attention backend", {"tfx.model.attention": ("eager", "flex", "auto")})
HEADS = Registry("head", {"tfx.model.heads": ("gene_id", "count")})
LIKELIHOODS = Registry("likelihood", {"tfx.model.likelihoods": ("ztp", "poisson", "negbin")})
TASKS = Registry("task", {"tfx.model.tasks": ("classification", "regression")})
OBJECTIVES = Registry("objective", {
    "tfx.train.objectives.pretrain": ("pretrain",),
    "tfx.train.objectives.continuation": ("continue",),
    "tfx.train.objectives.finetune": ("finetune",),
})
STRATEGIES = Registry("strategy", {"tfx.train.strategies": (
    "auto", "ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")})
LOGGERS = Registry("logger", {"tfx.train.loggers": ("csv", "wandb")})

REGISTRIES: dict[str, Registry] = {
    "species": SPECIES,
    "tokenizers": TOKENIZERS,
    "attention": ATTENTION,
    "heads": HEADS,
    "likelihoods": LIKELIHOODS,
    "tasks": TASKS,
    "objectives": OBJECTIVES,
    "strategies": STRATEGIES,
    "loggers": LOGGERS,
}


def load_plugins(force: bool = False) -> list[str]:
    """Import every ``tfx.plugins`` entry point once; return the names loaded."""
    global _plugins_loaded, _plugin_origin
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        _plugin_origin = f"plugin {dist} ({ep.value})"
        try:
            target: Any = ep.load()
            if callable(target):
                target()
        except Exception as err:  # a broken plugin must not take tfx down with it
            raise RuntimeError(f"tfx plugin '{ep.name}' from {dist} failed to load: {err}") from err
        finally:
            _plugin_origin = None
        loaded.append(ep.name)
    return loaded


def describe() -> Iterator[tuple[str, str, str]]:
    """(registry, name, origin) for everything registered, plugins included, importing no built-in."""
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            yield kind, name, registry.origin(name)
