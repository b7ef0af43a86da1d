"""Gene vocabularies: species embedding tables (h5), special tokens, aux vocabularies."""

from tfx.vocab.genes import GeneVocab, read_gene_embeddings, write_gene_embeddings
from tfx.vocab.aux import read_aux_vocab, write_aux_vocab
from tfx.vocab.species import Species, species_for_file

__all__ = [
    "GeneVocab",
    "read_gene_embeddings",
    "write_gene_embeddings",
    "read_aux_vocab",
    "write_aux_vocab",
    "Species",
    "species_for_file",
]
