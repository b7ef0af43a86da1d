"""The component registries: recipes and checkpoints name components, the registry builds them.

Configs only ever hold registry names, never import paths, so loading a config cannot run code.
Each registry knows the tfx modules that hold its built-in entries and imports them the first time
it is asked for a name (as it loads plugins), so a registry answers for every built-in component
whoever asks, and no layer has to import a higher one for its side effects. Third-party packages add
components through the entry-point group ``tfx.plugins``: each entry point names a module (or a
callable) whose import registers its components.

A name nobody registered is a ``RegistryError`` (one line, exit 2) that names what is registered.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterator
from typing import Any

from tfx.errors import RegistryError

PLUGIN_GROUP = "tfx.plugins"

_plugin_origin: str | None = None  # set while a plugin's entry point is loading
_plugins_loaded = False


class Registry:
    """A named set of components of one kind (likelihoods, attention backends, ...).

    ``builtins``: the modules whose import registers tfx's own entries, imported on first use."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()):
        self.kind = kind
        self.builtins = builtins
        self._entries: dict[str, tuple[Any, str]] = {}

    def register(self, name: str, obj: Any = None, *, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, override=override)
        if name in self._entries and not override and self._entries[name][0] is not obj:
            raise ValueError(
                f"{self.kind} '{name}' is already registered by {self._entries[name][1]}; "
                "pass override=True to replace it"
            )
        origin = _plugin_origin or getattr(obj, "__module__", "?")
        self._entries[name] = (obj, origin)
        return obj

    def load(self) -> None:
        """Import the built-in modules (Python keeps them: a second call costs nothing), then the plugins."""
        for module in self.builtins:
            importlib.import_module(module)
        load_plugins()

    def get(self, name: str) -> Any:
        if name not in self._entries:
            self.load()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(f"unknown {self.kind} '{name}' (registered: {known})")
        return self._entries[name][0]

    def build(self, name: str, /, **kwargs) -> Any:
        return self.get(name)(**kwargs)

    def __contains__(self, name: str) -> bool:
        if name not in self._entries:
            self.load()
        return name in self._entries

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, Any, str]]:
        self.load()
        for name in sorted(self._entries):
            obj, origin = self._entries[name]
            yield name, obj, origin


SPECIES = Registry("species", ("tfx.vocab.species", "tfx.synth"))
TOKENIZERS = Registry("tokenizer", ("tfx.tokenize",))
ATTENTION = Registry("attention backend", ("tfx.model.attention",))
HEADS = Registry("head", ("tfx.model.heads",))
LIKELIHOODS = Registry("likelihood", ("tfx.model.likelihoods",))
TASKS = Registry("task", ("tfx.model.tasks",))
OBJECTIVES = Registry("objective", ("tfx.train.objectives",))
STRATEGIES = Registry("strategy", ("tfx.train.strategies",))
LOGGERS = Registry("logger", ("tfx.train.loggers",))

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
    for registry in REGISTRIES.values():  # tfx's own entries first: a plugin may override one of them
        for module in registry.builtins:
            importlib.import_module(module)
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
    """(registry, name, origin) for everything registered, plugins included."""
    for kind, registry in REGISTRIES.items():
        for name, _, origin in registry.items():
            yield kind, name, origin
