"""Protein FASTA -> per-gene ESM-2 embeddings (fair-esm), written as a species gene h5."""

from tfx.esm.embed import DEFAULT_LAYER, MAX_RESIDUES, embed_proteins
from tfx.esm.fasta import ISOFORMS, Protein, read_proteins, select_isoforms
from tfx.esm.model import DEFAULT_MODEL, load_esm

__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_MODEL",
    "ISOFORMS",
    "MAX_RESIDUES",
    "Protein",
    "embed_proteins",
    "load_esm",
    "read_proteins",
    "select_isoforms",
]
