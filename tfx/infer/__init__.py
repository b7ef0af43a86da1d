"""Inference: cell embeddings, contextual gene embeddings and log-likelihoods from h5ad files."""
