"""Shard writing and shard loading: cells/s per core and peak memory, against tfx's h5ad path.

    python tools/bench/loader.py [--cells 10000] [--scale 4] [--genes 20000] [--expressed 1500]
        [--processes 1] [--workdir DIR]

1. Makes two synthetic h5ad files of N and scale x N cells (CSR, ~expressed genes per cell drawn
   from a skewed gene distribution, integer counts), written chunk by chunk.
2. Writes the shards of each with `write_shards` in a fresh process: cells per CPU-second (per
   core) and the process's peak RSS. Equal peaks for both sizes = writing memory is bounded.
3. Loads the large input's shards with tokenization (random gene order, seq_len 2047, clipping,
   assay token) into token-budget batches (ShardLoader, num_workers=0, one epoch), in a fresh
   process; the baseline is tfx's h5ad path over the same file (CellReader -> Preprocessing ->
   length_batches -> collate), as `tfx infer` and the in-memory training source read cells.
4. The same loading figures on the real mouse cells (../shared/data/mouse_val.h5ad) when present.
Each phase runs as its own process, so every peak RSS is that phase's alone (imports included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MOUSE = ROOT.parent / "shared" / "data" / "mouse_val.h5ad"
SPECIALS = ["[PAD]", "[START]", "[END]", "[RD]", "[CELL]", "[MASK]", "unknown"]


def make_h5ad(path: Path, n_cells: int, n_genes: int, expressed: int, seed: int = 0) -> Path:
    """A CSR h5ad in anndata's on-disk layout, written 1,000 cells at a time."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, n_genes + 1) ** 0.8  # a few genes in most cells, most genes in few
    p /= p.sum()
    with h5py.File(path, "w") as f:
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = x.create_dataset("data", (0,), "f4", maxshape=(None,), chunks=(1 << 16,))
        indices = x.create_dataset("indices", (0,), "i4", maxshape=(None,), chunks=(1 << 16,))
        indptr = [np.zeros(1, np.int64)]
        for start in range(0, n_cells, 1000):
            n = min(1000, n_cells - start)
            k = rng.poisson(expressed, n)
            rows, cols = np.repeat(np.arange(n), k), rng.choice(n_genes, size=k.sum(), p=p)
            counts = rng.geometric(0.35, size=k.sum()).astype(np.float32)
            chunk = sp.csr_matrix((counts, (rows, cols)), shape=(n, n_genes))  # duplicates summed
            chunk.sort_indices()
            end = data.shape[0]
            data.resize((end + chunk.nnz,))
            indices.resize((end + chunk.nnz,))
            data[end:], indices[end:] = chunk.data, chunk.indices
            indptr.append(chunk.indptr[1:].astype(np.int64) + end)
        x.create_dataset("indptr", data=np.concatenate(indptr))
        obs = pd.DataFrame({
            "cell_type": pd.Categorical(rng.choice([f"type{i}" for i in range(30)], n_cells)),
            "assay": pd.Categorical(rng.choice(["10x 3' v3", "10x 5' v2", "Smart-seq2"], n_cells)),
            "tissue": pd.Categorical(rng.choice(["lung", "blood", "brain"], n_cells)),
        }, index=[f"cell-{i}.{seed}" for i in range(n_cells)])
        var = pd.DataFrame({"ensembl_id": [f"ENSG{i:011d}" for i in range(n_genes)]},
                           index=[f"g{i}" for i in range(n_genes)])
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    return path


def _vocab_and_tokenizer(path: Path):
    import anndata
    import h5py
    import scipy.sparse as sp
    from anndata.io import read_elem

    from tfx.data.anndata import CellReader
    from tfx.tokenize import Preprocessing
    from tfx.vocab import GeneVocab

    # the genes as CellReader reads them (.raw's when present), from var alone: opening the file
    # would read its obs too, ~200 MiB at the peak for 1M cells, which the loader never holds
    with h5py.File(path, "r") as f:
        var = read_elem(f["raw/var"] if "raw" in f else f["var"])
    genes = list(CellReader(anndata.AnnData(sp.csr_matrix((0, len(var)), dtype=np.float32), var=var)).genes)
    assay = {"unknown": 0, "10x 3' v3": 1, "10x 5' v2": 2, "Smart-seq2": 3, "MERFISH": 4}
    return GeneVocab(SPECIALS + genes, SPECIALS), Preprocessing(2047, gene_order="random"), {"assay": assay}


def phase_write(args) -> dict:
    from tfx.data.shards import write_shards

    summary = write_shards([args.input], "homo_sapiens", args.output, cells_per_shard=args.cells_per_shard,
                           processes=args.processes)
    return {"cells": summary["cells"], "shards": summary["shards"]}


def phase_load(args) -> dict:
    from tfx.data.loader import ShardLoader
    from tfx.tokenize.batches import BatchSpec

    vocab, tokenizer, aux = _vocab_and_tokenizer(args.input)
    loader = ShardLoader({"data": {"urls": args.output}}, vocab, tokenizer, BatchSpec(16384, 256), aux_vocabs=aux,
                         shuffle_buffer=2000, epochs=1)
    tokens = sum(int((batch.gene_ids != vocab.pad).sum()) for batch in loader)
    return {"cells": loader.stats["cells"], "genes_per_cell": tokens / max(loader.stats["cells"], 1)}


def phase_h5ad(args) -> dict:
    """The baseline: tfx's h5ad path, the same tokenization and batching."""
    from tfx.data.anndata import CellReader
    from tfx.tokenize import collate, length_batches

    vocab, tokenizer, aux = _vocab_and_tokenizer(args.input)
    reader = CellReader(args.input, vocab.lookup)
    rng, cells = np.random.default_rng(0), 0
    for start, chunk in reader.iter_chunks():
        assays = reader.read_obs(["assay"], start, start + len(chunk))["assay"].astype(str)
        aux_ids = np.array([[aux["assay"].get(a, 0)] for a in assays], dtype=np.int64)
        tokens = [tokenizer(ids, counts, rng) for ids, counts in chunk]
        lengths = np.array([len(ids) + 2 for ids, _ in tokens])
        for idx in length_batches(lengths, 16384, 256):
            cells += len(collate([tokens[i] for i in idx], vocab.pad, tokenizer.seq_len, aux_ids[idx]).gene_ids)
    return {"cells": cells}


PHASES = {"write": phase_write, "load": phase_load, "h5ad": phase_h5ad}


def run_phase(name: str, script: str = __file__, **kw) -> dict:
    """One phase of ``script`` (this file, or another bench that calls ``child``) in a fresh process:
    its CPU time, wall time and peak RSS."""
    cmd = [sys.executable, str(script), "--phase", name] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args, phases: dict = PHASES) -> None:
    import tfx.data.loader  # noqa: F401  imports are not the phase's work
    import tfx.data.shards  # noqa: F401

    wall, cpu = time.perf_counter(), time.process_time()
    result = phases[args.phase](args)
    cpu = time.process_time() - cpu
    # children: the writer's pool processes when --processes > 1
    cpu += sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime"))
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result.update(wall_s=time.perf_counter() - wall, cpu_s=cpu, peak_mib=peak / 1024)
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--scale", type=int, default=4, help="the large input has scale x cells")
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--expressed", type=int, default=1500, help="mean expressed genes per cell")
    ap.add_argument("--processes", type=int, default=1, help="shard writer processes")
    ap.add_argument("--cells-per-shard", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return child(args)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tfx-bench-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}, work dir {work}")
    sizes = {"small": args.cells, "large": args.cells * args.scale}
    inputs = {}
    for name, n in sizes.items():
        inputs[name] = work / f"{name}.h5ad"
        if not inputs[name].exists():
            make_h5ad(inputs[name], n, args.genes, args.expressed, seed=len(inputs))
        print(f"input {name}: {n} cells x {args.genes} genes, {inputs[name].stat().st_size / 2**20:.0f} MiB")

    common = {"processes": args.processes, "cells_per_shard": args.cells_per_shard}
    print(f"\nshard writing ({args.processes} process{'es' if args.processes > 1 else ''}):")
    for name, path in inputs.items():
        out = work / f"shards-{name}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        r = run_phase("write", input=path, output=out, **common)
        size = sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20
        print(f"  {name:5s} {r['cells']:7d} cells  {r['cells'] / r['cpu_s']:7.0f} cells/s per core  "
              f"{r['cells'] / r['wall_s']:7.0f} cells/s wall  peak RSS {r['peak_mib']:6.0f} MiB  "
              f"({r['shards']} shards, {size:.0f} MiB)")

    sources = {"synthetic": (inputs["large"], work / "shards-large")}
    if MOUSE.exists():
        mouse_out = work / "shards-mouse"
        if not mouse_out.exists():
            run_phase("write", input=MOUSE, output=mouse_out, processes=1, cells_per_shard=250)
        sources["mouse (real)"] = (MOUSE, mouse_out)
    print("\nloading with tokenization (one process, one epoch):")
    for name, (path, shards) in sources.items():
        load = run_phase("load", input=path, output=shards)
        base = run_phase("h5ad", input=path)
        rate, base_rate = load["cells"] / load["cpu_s"], base["cells"] / base["cpu_s"]
        print(f"  {name}: {load['cells']} cells of {load['genes_per_cell']:.0f} tokens")
        print(f"    shards  {rate:7.0f} cells/s per core  {load['cells'] / load['wall_s']:7.0f} cells/s wall  "
              f"peak RSS {load['peak_mib']:6.0f} MiB")
        print(f"    h5ad    {base_rate:7.0f} cells/s per core  {base['cells'] / base['wall_s']:7.0f} cells/s wall  "
              f"peak RSS {base['peak_mib']:6.0f} MiB   (baseline)")
        print(f"    ratio shards / h5ad: {rate / base_rate:.2f}x per core")


if __name__ == "__main__":
    main()
