"""Evaluation of cell embeddings: label probes, species-vs-cell-type mixing, UMAP plots, reports."""

from tfx.eval.report import evaluate

__all__ = ["evaluate"]
