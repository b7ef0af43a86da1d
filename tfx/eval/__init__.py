"""Evaluation of cell embeddings: label probes, species-vs-cell-type mixing, UMAP plots, reports."""

__all__ = ["evaluate"]


def __getattr__(name: str):  # `tfx eval --help` and the options import no scientific stack
    if name == "evaluate":
        from tfx.eval.report import evaluate

        return evaluate
    raise AttributeError(f"module 'tfx.eval' has no attribute '{name}'")
