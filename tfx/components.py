"""Import the modules whose built-in components register themselves, then the plugins."""

from tfx.registry import load_plugins


def load_all() -> list[str]:
    import tfx.model  # noqa: F401  attention backends, heads, likelihoods, tasks
    import tfx.synth  # noqa: F401  the synthetic atlas' species
    import tfx.tokenize  # noqa: F401  gene orderings
    import tfx.train.loggers  # noqa: F401  loggers (Lightning is imported only when one is built)
    import tfx.train.objectives  # noqa: F401  objectives
    import tfx.train.strategies  # noqa: F401  strategies
    import tfx.vocab  # noqa: F401  species

    return load_plugins()
