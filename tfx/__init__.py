"""tfx: train, fine-tune and serve TranscriptFormer-style single-cell foundation models.

``tfx.load``, ``tfx.embed`` and ``tfx.evaluate`` (the notebook API, tfx/api.py) are imported on
first use, so ``import tfx`` stays light.
"""

API = ("load", "embed", "evaluate")


def __getattr__(name: str):
    if name in API:
        from tfx import api

        return getattr(api, name)
    raise AttributeError(f"module 'tfx' has no attribute '{name}'")


def __dir__():
    return sorted([*globals(), *API])
