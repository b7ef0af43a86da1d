"""tfx infer vs the reference's inference, whole processes, same checkpoint and cells.

    python tools/bench/infer_vs_reference.py [--cells 256] [--device cpu] [--precision 32]
        [--layers 4 --dim 256 --heads 8] [--reference-args ...]

Builds a random-weight checkpoint with the reference package (seq_len 2047), takes real cells
(../shared/data/mouse_val.h5ad when present, otherwise synthetic cells of the same sparsity),
runs `transcriptformer inference` and `tfx infer` as separate processes, and prints the wall
times, the speed ratio and the minimum cosine similarity between their cell embeddings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import reference  # noqa: E402

MOUSE = ROOT.parent / "shared" / "data" / "mouse_val.h5ad"
BIN = Path(sys.executable).parent


def cells(n: int, out: Path) -> tuple[Path, list[str]]:
    if MOUSE.exists():
        adata = anndata.read_h5ad(MOUSE)[:n].copy()
        adata.write_h5ad(out)
        return out, list(adata.var["ensembl_id"])
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_h5ad

    rng = np.random.default_rng(0)
    genes = [f"ENSSYN{i:011d}" for i in range(1200)]
    x = (rng.random((n, len(genes))) < 0.09) * rng.negative_binomial(2, 0.4, (n, len(genes)))
    return write_h5ad(out, genes, x), genes


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32", help="32 or 16-mixed (both tools)")
    ap.add_argument("--reference-batch-size", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, genes = cells(args.cells, tmp / "cells.h5ad")
        ckpt = reference.build_reference_checkpoint(
            tmp / "ckpt", {"mus_musculus": genes}, emb_dim=2560 if args.dim >= 2048 else 256, embed_dim=args.dim,
            num_heads=args.heads, num_layers=args.layers, model_dim=args.dim, seq_len=2047,
        )
        ref_time = timed([str(BIN / "transcriptformer"), "inference", "--checkpoint-path", str(ckpt),
                          "--data-file", str(data), "--output-path", str(tmp), "--output-filename", "ref.h5ad",
                          "--batch-size", str(args.reference_batch_size), "--precision", args.precision,
                          "--device", args.device])
        tfx_precision = {"32": "32", "16-mixed": "16-mixed"}[args.precision]
        tfx_time = timed([str(BIN / "tfx"), "infer", "--checkpoint", str(ckpt), "--data", str(data), "--output",
                          str(tmp / "tfx.h5ad"), "--device", args.device, "--precision", tfx_precision])
        ref = anndata.read_h5ad(tmp / "ref.h5ad").obsm["embeddings"].astype(np.float64)
        ours = anndata.read_h5ad(tmp / "tfx.h5ad").obsm["embeddings"].astype(np.float64)
        cos = (ref * ours).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
        print(f"model: {args.layers} layers x {args.dim}, seq_len 2047; {args.cells} cells; "
              f"device {args.device}, precision {args.precision}")
        print(f"reference: {ref_time:8.1f} s  ({args.cells / ref_time:8.2f} cells/s)")
        print(f"tfx:       {tfx_time:8.1f} s  ({args.cells / tfx_time:8.2f} cells/s)")
        print(f"speed-up (whole processes): {ref_time / tfx_time:.1f}x; min cosine(ref, tfx) = {cos.min():.7f}")


if __name__ == "__main__":
    main()
