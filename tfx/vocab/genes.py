"""Species gene-embedding files and the gene vocabulary built from them.

File layout (official): dataset ``keys`` (gene ids as bytes) and group ``arrays`` holding one
1-D dataset per gene. The vocabulary is the special tokens in config order, then each file's
genes in file order with duplicates dropped (first wins). Special-token rows of the frozen
table come from ``numpy.random.RandomState(42).rand(n_special, dim)``, as in the reference.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tfx.atomic import atomic_path, h5_file
from tfx.errors import VocabError

log = logging.getLogger(__name__)


def read_gene_embeddings(path: str | os.PathLike, arrays: bool = True) -> tuple[list[str], np.ndarray | None]:
    """Gene ids of an official ``<species>_gene.h5`` and, if asked, their embeddings (genes x dim)."""
    path = Path(path)
    if path.suffix in (".pkl", ".pickle"):
        raise VocabError(f"{path}: pickle embedding files are refused (they can run code); convert it to the h5 layout")
    try:
        with h5py.File(path, "r") as f:
            if "keys" not in f or "arrays" not in f:
                raise VocabError(f"{path}: not a gene embedding file (needs dataset 'keys' and group 'arrays')")
            genes = [k.decode() if isinstance(k, bytes) else str(k) for k in f["keys"][:]]
            if not genes:
                raise VocabError(f"{path}: the file lists no gene")
            table = None
            if arrays:
                group = f["arrays"]
                table = np.stack([group[g][:] for g in genes]).astype(np.float32, copy=False)
                bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
                if len(bad):  # a NaN row would make every cell holding that gene NaN, silently
                    raise VocabError(f"{path}: the embeddings of {len(bad)} genes hold NaN or inf (first: "
                                     f"{genes[bad[0]]}); re-embed them (tfx embed-proteins) or leave them out")
    except OSError as err:  # h5py's messages run over several lines
        reason = "it is a directory" if path.is_dir() else str(err).strip().splitlines()[0]
        raise VocabError(f"{path}: cannot read gene embeddings ({reason})") from err
    return genes, table


def write_gene_embeddings(path: str | os.PathLike, genes: list[str], table: np.ndarray) -> None:
    """Write the official layout atomically (temporary name, then rename)."""
    path = Path(path)
    if len(genes) != len(table):
        raise VocabError(f"{path}: {len(genes)} genes but {len(table)} embedding rows")
    with atomic_path(path) as tmp, h5_file(tmp) as f:  # a full disk: one OSError, no half-written file
        f.create_dataset("keys", data=np.array(genes, dtype="S"))
        group = f.create_group("arrays")
        for gene, row in zip(genes, np.asarray(table, dtype=np.float32)):
            group.create_dataset(gene, data=row)


def special_token_rows(n_special: int, dim: int) -> np.ndarray:
    return np.random.RandomState(42).rand(n_special, dim)


@dataclass
class GeneVocab:
    """Token strings in index order, with the files each gene came from."""

    tokens: list[str]
    special_tokens: list[str]
    files: list[tuple[str, list[str]]] = field(default_factory=list)  # (file name, genes it added)

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}
        for required in ("[PAD]", "[START]", "[END]", "unknown"):
            if required not in self.index:
                raise VocabError(f"special token {required} is missing from the vocabulary")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad(self) -> int:
        return self.index["[PAD]"]

    @property
    def start(self) -> int:
        return self.index["[START]"]

    @property
    def end(self) -> int:
        return self.index["[END]"]

    @property
    def unknown(self) -> int:
        return self.index["unknown"]

    def lookup(self, genes) -> np.ndarray:
        """Vocabulary index of each gene id, -1 where it is not in the vocabulary."""
        get = self.index.get
        n_special = len(self.special_tokens)
        return np.fromiter(
            ((i if (i := get(g, -1)) >= n_special else -1) for g in genes), dtype=np.int64, count=len(genes)
        )

    @classmethod
    def from_files(cls, special_tokens: list[str], paths: list[str | os.PathLike], arrays: bool = True):
        """Build the vocabulary (and, if asked, the frozen table) exactly as the reference does."""
        tokens = list(special_tokens)
        seen = set(tokens)
        files, rows, dim = [], [], None
        for path in paths:
            genes, table = read_gene_embeddings(path, arrays=arrays)
            keep, dropped = [], []
            for i, g in enumerate(genes):
                if g in seen:
                    dropped.append(g)
                    continue
                seen.add(g)
                keep.append(i)
            if dropped:  # one line per file: a mismatched file can repeat thousands
                log.warning("%s: %d duplicate genes dropped, first occurrence wins (e.g. %s)", path, len(dropped),
                            ", ".join(dropped[:3]))
            added = [genes[i] for i in keep]
            tokens += added
            files.append((Path(path).name, added))
            if table is not None:
                if dim is not None and table.shape[1] != dim:
                    raise VocabError(f"{path}: embedding dimension {table.shape[1]} differs from {dim} of the other files")
                dim = table.shape[1]
                rows.append(table[keep])
        vocab = cls(tokens, list(special_tokens), files)
        if not arrays:
            return vocab, None
        specials = special_token_rows(len(special_tokens), dim)
        # float64 specials concatenated with the file rows, then float32: the reference's rounding.
        table = np.concatenate([specials, *rows], axis=0).astype(np.float32)
        return vocab, table
