"""Per-gene ESM embeddings: the mean over residues of one representation layer, written as a gene h5.

Work is resumable: each batch's finished genes go to ``OUTPUT.partial`` (h5, one dataset per
gene, no pickle) before the next batch starts; a re-run with the same model, layer and
truncation reuses every gene whose proteins are unchanged. The output is written atomically
and the progress file removed once it is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from tfx.atomic import atomic_path
from tfx.errors import InputError
from tfx.esm.fasta import read_proteins, select_isoforms
from tfx.esm.model import DEFAULT_MODEL, load_esm
from tfx.vocab import write_gene_embeddings

log = logging.getLogger(__name__)

DEFAULT_LAYER = 33
MAX_RESIDUES = 1022  # ESM-2 was trained on 1,024 tokens: BOS + 1,022 residues + EOS


def embed_proteins(
    fasta: str | os.PathLike,
    output: str | os.PathLike,
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    gene_map: str | os.PathLike | None = None,
    layer: int = DEFAULT_LAYER,
    isoforms: str = "first",
    max_residues: int = MAX_RESIDUES,
    token_budget: int = 4096,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``output`` (official gene h5 layout) from a protein FASTA; returns a summary.

    ``model`` is a fair-esm name (read from the torch hub cache) or a local ``.pt`` path;
    ``progress(done, total)`` is called after each batch with counts of distinct sequences.
    """
    if max_residues < 1 or token_budget < 1:
        raise InputError(f"--max-residues {max_residues} / --token-budget {token_budget}: both must be positive")
    started = time.perf_counter()
    output = Path(output)
    genes = {
        gene: [s[:max_residues] for s in seqs]
        for gene, seqs in select_isoforms(read_proteins(fasta, gene_map), isoforms).items()
    }
    esm_model, alphabet, model_path = load_esm(model)
    layer = resolve_layer(esm_model, layer, model_path)
    recipe = json.dumps({"model": str(model_path.resolve()), "model_bytes": model_path.stat().st_size,
                         "layer": layer, "max_residues": max_residues})
    digests = {gene: _digest(seqs) for gene, seqs in genes.items()}
    run_device = resolve_device(device)

    with ProgressFile(progress_path(output), recipe) as saved:
        rows = {g: row for g in genes if (row := saved.get(g, digests[g])) is not None}
        todo = {g: seqs for g, seqs in genes.items() if g not in rows}
        if rows:
            log.info("%s: resuming, %d of %d genes already embedded", saved.path, len(rows), len(genes))
        # A sequence shared by proteins (or genes) is embedded once.
        wanted_by: dict[str, list[str]] = {}
        for gene, seqs in todo.items():
            for seq in seqs:
                wanted_by.setdefault(seq, []).append(gene)
        sequences = sorted(wanted_by, key=len, reverse=True)  # longest first: out of memory early, if at all
        esm_model.to(run_device)
        parts: dict[str, list[np.ndarray]] = {g: [] for g in todo}
        done = 0
        for batch in token_batches(sequences, token_budget, int(alphabet.prepend_bos) + int(alphabet.append_eos)):
            finished = {}
            for seq, emb in zip(batch, embed_batch(esm_model, alphabet, batch, layer, run_device)):
                for gene in wanted_by[seq]:
                    parts[gene].append(emb)
                    if len(parts[gene]) == len(todo[gene]):
                        finished[gene] = np.mean(parts.pop(gene), axis=0)
            saved.add({g: (digests[g], row) for g, row in finished.items()})
            rows.update(finished)
            done += len(batch)
            if progress is not None:
                progress(done, len(sequences))

    order = list(genes)
    with atomic_path(output) as tmp:
        write_gene_embeddings(tmp, order, np.stack([rows[g] for g in order]))
    progress_path(output).unlink()
    return {"output": str(output), "genes": len(order), "dim": int(rows[order[0]].shape[0]),
            "computed": len(todo), "resumed": len(order) - len(todo), "sequences": len(sequences),
            "seconds": time.perf_counter() - started}


def progress_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial")


def resolve_layer(model: torch.nn.Module, layer: int, path: Path) -> int:
    """The representation layer as fair-esm numbers it: 0 = token embeddings, n = the last; negative counts back."""
    n = len(model.layers)
    if not -n - 1 <= layer <= n:
        raise InputError(f"--layer {layer}: {path} has {n} layers; pass --layer between 0 and {n} (or -1 for the last)")
    return layer % (n + 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def token_batches(sequences: list[str], token_budget: int, extra_tokens: int) -> Iterator[list[str]]:
    """Batches of longest-first sequences whose padded size (count x longest) stays within the budget."""
    batch: list[str] = []
    for seq in sequences:
        if batch and (len(batch) + 1) * (len(batch[0]) + extra_tokens) > token_budget:
            yield batch
            batch = []
        batch.append(seq)
    if batch:
        yield batch


@torch.inference_mode()
def embed_batch(model: torch.nn.Module, alphabet, sequences: list[str], layer: int, device: torch.device) -> np.ndarray:
    """Mean of layer ``layer``'s residue representations per sequence (BOS, EOS and padding excluded)."""
    bos = int(alphabet.prepend_bos)
    width = max(map(len, sequences)) + bos + int(alphabet.append_eos)
    tokens = torch.full((len(sequences), width), alphabet.padding_idx, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if bos:
            tokens[i, 0] = alphabet.cls_idx
        # get_idx reads `*` (a stop) and any other letter outside the alphabet as <unk>.
        tokens[i, bos:bos + len(seq)] = torch.tensor([alphabet.get_idx(c) for c in seq])
        if alphabet.append_eos:
            tokens[i, bos + len(seq)] = alphabet.eos_idx
    reps = model(tokens.to(device), repr_layers=[layer])["representations"][layer].float()
    lengths = torch.tensor([len(s) for s in sequences], device=device)
    positions = torch.arange(width, device=device)
    residues = (positions >= bos) & (positions < bos + lengths[:, None])
    return ((reps * residues[..., None]).sum(1) / lengths[:, None]).cpu().numpy()


def _digest(sequences: list[str]) -> str:
    return hashlib.sha1("\n".join(sequences).encode()).hexdigest()


class ProgressFile:
    """Genes finished so far: group ``arrays`` (one dataset per gene, attribute ``proteins`` = digest
    of the sequences it was computed from) and attribute ``recipe`` (model, layer, truncation)."""

    def __init__(self, path: Path, recipe: str):
        self.path, self.recipe, self.file = path, recipe, None

    def __enter__(self) -> ProgressFile:
        if self.path.exists():
            try:
                self.file = h5py.File(self.path, "a")
            except OSError as err:  # cut short mid-write: its genes are lost, nothing else is
                log.warning("%s: unreadable progress file (%s); starting over", self.path, err)
        if self.file is not None and self.file.attrs.get("recipe") != self.recipe:
            made_with = self.file.attrs.get("recipe")
            self.file.close()
            raise InputError(f"{self.path}: progress of a run with other settings ({made_with}); "
                             "re-run with those settings to resume, or delete the file to start over")
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = h5py.File(self.path, "w")
            self.file.attrs["recipe"] = self.recipe
            self.file.create_group("arrays")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def get(self, gene: str, digest: str) -> np.ndarray | None:
        ds = self.file["arrays"].get(gene)
        return ds[:] if ds is not None and ds.attrs.get("proteins") == digest else None

    def add(self, rows: dict[str, tuple[str, np.ndarray]]) -> None:
        arrays = self.file["arrays"]
        for gene, (digest, row) in rows.items():
            if gene in arrays:
                del arrays[gene]
            arrays.create_dataset(gene, data=np.asarray(row, dtype=np.float32)).attrs["proteins"] = digest
        self.file.flush()
