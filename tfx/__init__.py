"""tfx: train, fine-tune and serve TranscriptFormer-style single-cell foundation models.

``tfx.load``, ``tfx.embed``, ``tfx.generate_cells`` and ``tfx.evaluate`` (the notebook API,
tfx/api.py) are imported on first use, so ``import tfx`` stays light. (``tfx.generate`` is the
package of sampling code, so the function that samples cells is ``tfx.generate_cells``.)
"""

API = ("load", "embed", "generate_cells", "evaluate")


def __getattr__(name: str):
    if name in API:
        from tfx import api

        return getattr(api, name)
    raise AttributeError(f"module 'tfx' has no attribute '{name}'")


def __dir__():
    return sorted([*globals(), *API])
