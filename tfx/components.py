"""Import the modules whose built-in components register themselves, then the plugins."""

from tfx.registry import load_plugins


def load_all() -> list[str]:
    import tfx.model  # noqa: F401  attention backends, heads, likelihoods
    import tfx.synth  # noqa: F401  the synthetic atlas' species
    import tfx.tokenize  # noqa: F401  gene orderings
    import tfx.train.module  # noqa: F401  tasks
    import tfx.vocab  # noqa: F401  species

    return load_plugins()
