"""Every registry's built-in components, then the plugins (what `tfx registry` lists)."""

from tfx.registry import load_plugins


def load_all() -> None:
    load_plugins()  # each registry's built-in modules first, then the entry points
