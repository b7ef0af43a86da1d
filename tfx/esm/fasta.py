"""Protein FASTA -> each gene's proteins, and the isoforms embedded for it."""

from __future__ import annotations

import gzip
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tfx.errors import InputError

log = logging.getLogger(__name__)

ISOFORMS = ("first", "longest", "mean")
_GENE_FIELD = re.compile(r"(?:^|\s)gene:(\S+)")


@dataclass(frozen=True)
class Protein:
    id: str  # the header's first word
    gene: str  # version stripped
    sequence: str


def strip_version(gene_id: str) -> str:
    """'ENSG00000139618.15' -> 'ENSG00000139618': the rule the h5ad reader applies to var gene ids."""
    return gene_id.split(".")[0]


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def read_fasta(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(header without '>', sequence) of every record; `.gz` files are read as gzip."""
    path = Path(path)
    records, header, chunks = [], None, []
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                line = line.strip()
                if line.startswith(">"):
                    if header is not None:
                        records.append((header, "".join(chunks)))
                    header, chunks = line[1:].strip(), []
                elif line:
                    if header is None:
                        raise InputError(f"{path}: line {line_no} comes before any '>' header; pass a protein FASTA file")
                    chunks.append(line)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the FASTA file ({err}); pass a protein FASTA (.fa or .fa.gz)") from err
    if header is not None:
        records.append((header, "".join(chunks)))
    if not records:
        raise InputError(f"{path}: the FASTA file holds no protein; pass a protein FASTA such as Ensembl's *.pep.all.fa")
    return records


def read_gene_map(path: str | os.PathLike) -> dict[str, str]:
    """Protein id (first column) -> gene id (second column) of a tab-separated file; '#' lines are comments."""
    path = Path(path)
    mapping = {}
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip() or line.startswith("#"):
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
                    raise InputError(f"{path}: line {line_no} is not 'protein_id<TAB>gene_id'; fix the gene map")
                mapping[fields[0].strip()] = fields[1].strip()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the gene map ({err}); pass a TSV of protein_id<TAB>gene_id") from err
    if not mapping:
        raise InputError(f"{path}: the gene map is empty; pass a TSV of protein_id<TAB>gene_id")
    return mapping


def read_proteins(fasta: str | os.PathLike, gene_map: str | os.PathLike | None = None) -> list[Protein]:
    """Proteins of a FASTA in file order, each with its gene: from --gene-map, else the header's `gene:` field."""
    records = read_fasta(fasta)
    mapping = read_gene_map(gene_map) if gene_map else {}
    ids = [header.split()[0] if header else "" for header, _ in records]
    proteins, mapped, no_gene, empty = [], 0, 0, 0
    for protein_id, (header, sequence) in zip(ids, records):
        gene = mapping.get(protein_id) or mapping.get(strip_version(protein_id))
        mapped += gene is not None
        if gene is None and (match := _GENE_FIELD.search(header)):
            gene = match.group(1)
        if gene is None:
            no_gene += 1
        elif not sequence:
            empty += 1
        elif not strip_version(gene) or "/" in gene:
            source = gene_map if protein_id in mapping or strip_version(protein_id) in mapping else fasta
            raise InputError(f"{source}: protein {protein_id} has gene id {gene!r}, not a gene identifier "
                             "(an id has no '/' and does not start with '.'); fix it there")
        else:
            # Some tools write residues in lower case; the ESM alphabet is upper case.
            proteins.append(Protein(protein_id, strip_version(gene), sequence.upper()))
    if mapping and not mapped:
        raise InputError(
            f"{gene_map}: none of its {len(mapping)} protein ids matches a header of {fasta} "
            f"(e.g. map '{next(iter(mapping))}', FASTA '{ids[0]}'); "
            "the first column must be the header's first word"
        )
    if not proteins:
        fix = "fix the gene map" if mapping else "pass --gene-map TSV (protein_id<TAB>gene_id) for other header styles"
        raise InputError(f"{fasta}: no protein has a gene (Ensembl peptide headers carry 'gene:ID'); {fix}")
    if no_gene:
        log.warning("%s: skipped %d proteins without a gene id", fasta, no_gene)
    if empty:
        log.warning("%s: skipped %d proteins with an empty sequence", fasta, empty)
    return proteins


def select_isoforms(proteins: list[Protein], isoforms: str = "first") -> dict[str, list[str]]:
    """Gene -> the sequences whose embeddings make its row, genes in order of first appearance.

    first: the gene's first protein in the file (the reference's recipe); longest: its longest
    protein (the first of equal ones); mean: all its proteins, their embeddings averaged.
    """
    if isoforms not in ISOFORMS:
        raise ValueError(f"isoforms must be one of {ISOFORMS}, not {isoforms!r}")
    by_gene: dict[str, list[str]] = {}
    for p in proteins:
        by_gene.setdefault(p.gene, []).append(p.sequence)
    if isoforms == "first":
        return {g: seqs[:1] for g, seqs in by_gene.items()}
    if isoforms == "longest":
        return {g: [max(seqs, key=len)] for g, seqs in by_gene.items()}
    return by_gene
