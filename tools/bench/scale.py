"""Atlas scale: CPU-seconds per cell and peak RSS of shard, loader and infer from 10k to 1M cells.

    nice -n 19 python tools/bench/scale.py [--sizes 10000,100000,1000000] [--genes 20000]
        [--expressed 400] [--soma-size 100000] [--seq-len 64] --workdir DIR

1. Makes a synthetic atlas per size (loader.py's ``make_h5ad``: CSR h5ad in anndata's layout,
   written 1,000 cells at a time; ~``expressed`` genes per cell of ``genes``).
2. Builds a tiny random-weight checkpoint whose vocabulary is the atlas's genes (tools/teacher.py).
3. Runs, each in a fresh process (loader.py's ``run_phase``: CPU time, wall time, peak RSS, one
   thread): ``tfx shard`` (one writer process); the shard loader (one epoch with tokenization,
   loader.py's ``load`` phase); ``tfx infer --outputs embeddings,llh`` reading the h5ad backed;
   at ``--soma-size``: ``tiledbsoma.io.from_h5ad``, then ``tfx shard`` and ``tfx infer`` from the
   SOMA experiment.
4. Prints one table, with each phase's CPU-seconds per cell and peak RSS as a ratio to its row at
   the smallest size (issue 24's goals: <= 1.2x per cell, <= 1.25x peak RSS at 1M vs 10k).
Imports are done before the clock starts; the checkpoint load and obs reads are in the phase.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import child, make_h5ad, phase_load, run_phase  # noqa: E402


def _cli(*argv) -> None:
    from tfx.cli import main

    code = main([str(a) for a in argv])
    if code:
        raise SystemExit(f"tfx {argv[0]} exited {code}")


def phase_shard(args) -> dict:
    _cli("shard", "--input", args.input, "--species", "homo_sapiens", "--output", args.output,
         "--processes", 1, "--cells-per-shard", 10_000)
    return {}


def phase_infer(args) -> dict:
    _cli("infer", "--checkpoint", args.checkpoint, "--data", args.input, "--output", args.output,
         "--outputs", "embeddings,llh", "--device", "cpu", "--overwrite")
    return {}


def phase_soma(args) -> dict:
    import tiledbsoma.io

    tiledbsoma.io.from_h5ad(args.output, str(args.input), measurement_name="RNA")
    return {}


PHASES = {"shard": phase_shard, "load": phase_load, "infer": phase_infer, "soma-ingest": phase_soma}


def _child(args) -> None:
    import tfx.cli  # noqa: F401  imports are not the phase's work
    import tfx.infer.run  # noqa: F401

    if args.phase == "soma-ingest":
        import tiledbsoma.io  # noqa: F401
    child(args, PHASES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma list of cell counts")
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--expressed", type=int, default=400, help="mean expressed genes per cell")
    ap.add_argument("--soma-size", type=int, default=100_000, help="the size whose SOMA path is run (0: none)")
    ap.add_argument("--seq-len", type=int, default=64, help="the tiny checkpoint's context (genes per cell read)")
    ap.add_argument("--workdir", type=Path, help="where atlases, shards and outputs go (required)")
    ap.add_argument("--phases", default="shard,load,infer,soma", help="comma list of shard, load (needs shard), "
                    "infer, soma (at --soma-size)")
    ap.add_argument("--keep", action="store_true", help="keep shards, outputs and SOMA experiments")
    for hidden in ("phase", "input", "output", "checkpoint"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        args.input = Path(args.input)
        return _child(args)

    if args.workdir is None:
        ap.error("--workdir is required")
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # per-core figures; the children inherit
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sizes, todo = [int(s) for s in args.sizes.split(",")], set(args.phases.split(","))
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.genes} genes, ~{args.expressed} expressed per cell, work dir {work}", flush=True)

    atlases = {}
    for n in sizes:
        path = atlases[n] = work / f"atlas-{n}-{args.genes}g-{args.expressed}.h5ad"
        if not path.exists():
            started = time.perf_counter()
            make_h5ad(path.with_suffix(".part"), n, args.genes, args.expressed, seed=n)
            path.with_suffix(".part").rename(path)
            print(f"# wrote {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
        print(f"# {path.name}: {path.stat().st_size / 2**30:.2f} GiB", flush=True)

    ckpt = work / f"ckpt-{args.genes}g-{args.seq_len}"
    if not ckpt.exists() and todo & {"infer", "soma"}:
        import h5py
        from anndata.io import read_elem

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from teacher import build_teacher

        with h5py.File(atlases[sizes[0]], "r") as f:
            genes = list(read_elem(f["var"])["ensembl_id"])
        build_teacher(ckpt, species="homo_sapiens", genes=genes, emb_dim=16, seq_len=args.seq_len,
                      gene_id_loss_weight=0.0)  # no gene-id head: llh reads the count head only

    rows = []

    def phase(label: str, n: int, name: str, **kw) -> None:
        r = run_phase(name, script=__file__, **kw)
        rows.append((label, n, r))
        print(f"# {label} {n}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s, {r['peak_mib']:.0f} MiB", flush=True)

    def clear(*paths: Path) -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    for n in sizes:
        shards, out = work / f"shards-{n}", work / f"infer-{n}.h5ad"
        clear(shards, out)
        if "shard" in todo:
            phase("shard", n, "shard", input=atlases[n], output=shards)
        if "load" in todo:
            phase("loader", n, "load", input=atlases[n], output=shards)
        if "infer" in todo:
            phase("infer", n, "infer", input=atlases[n], output=out, checkpoint=ckpt)
        if n == args.soma_size and "soma" in todo:
            soma, soma_shards, soma_out = work / f"soma-{n}", work / f"soma-shards-{n}", work / f"soma-infer-{n}.h5ad"
            clear(soma, soma_shards, soma_out)
            phase("SOMA ingest (from_h5ad)", n, "soma-ingest", input=atlases[n], output=soma)
            phase("shard from SOMA", n, "shard", input=soma, output=soma_shards)
            phase("infer from SOMA", n, "infer", input=soma, output=soma_out, checkpoint=ckpt)
            if not args.keep:
                clear(soma, soma_shards, soma_out)
        if not args.keep:
            clear(shards, out)

    base = {label: r for label, n, r in rows if n == sizes[0]}
    print("\n| phase | cells | wall s | CPU s | cells/s per core | CPU µs per cell | peak RSS MiB "
          f"| per-cell cost vs {sizes[0]:,} | peak RSS vs {sizes[0]:,} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, r in sorted(rows, key=lambda row: (list(PHASE_ORDER).index(row[0]), row[1])):
        per_cell = r["cpu_s"] / n
        b = base.get(label)
        ratios = (f"{per_cell / (b['cpu_s'] / sizes[0]):.2f}x | {r['peak_mib'] / b['peak_mib']:.2f}x" if b
                  else "- | -")
        print(f"| {label} | {n:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {n / r['cpu_s']:,.0f} | "
              f"{per_cell * 1e6:,.0f} | {r['peak_mib']:,.0f} | {ratios} |")


PHASE_ORDER = ("shard", "loader", "infer", "SOMA ingest (from_h5ad)", "shard from SOMA", "infer from SOMA")

if __name__ == "__main__":
    main()
