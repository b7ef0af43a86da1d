"""Print how far tfx is from the reference on a random checkpoint the reference builds itself.

    python tools/parity_check.py [--cells 64] [--seq-len 63]

Synthetic genes and cells (seeded), so it runs anywhere the test extras are installed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import reference  # noqa: E402
from conftest import write_h5ad  # noqa: E402
from parity import max_rel_error  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=63)
    args = ap.parse_args()

    import anndata
    import pandas as pd

    from tfx.cli import main as tfx

    rng = np.random.default_rng(0)
    genes = [f"ENSSYN{i:08d}" for i in range(600)]
    lengths = rng.integers(0, 200, size=args.cells)
    counts = np.zeros((args.cells, len(genes)), dtype=np.float32)
    for row, n in enumerate(lengths):
        counts[row, rng.choice(len(genes), n, replace=False)] = rng.negative_binomial(2, 0.3, n) + 1
    obs = pd.DataFrame({"assay": rng.choice(["10x 3' v3", "MERFISH", "other"], args.cells)},
                       index=[f"cell{i}" for i in range(args.cells)])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_h5ad(tmp / "cells.h5ad", genes, counts, obs)
        ckpt = reference.build_reference_checkpoint(tmp / "ckpt", {"synthetic": genes[:500]}, seq_len=args.seq_len)
        ref = reference.run_reference(ckpt, data, workdir=tmp / "ref")
        assert tfx(["infer", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp / "out.h5ad"),
                    "--outputs", "embeddings,llh", "--device", "cpu"]) == 0
        ours = anndata.read_h5ad(tmp / "out.h5ad")
        print(f"cells: {args.cells}, expressed genes per cell: {lengths.min()}-{lengths.max()}, seq_len {args.seq_len}")
        print(f"cell embeddings  max rel error vs reference: {max_rel_error(ours.obsm['embeddings'], ref.obsm['embeddings']):.2e}")
        print(f"log-likelihoods  max rel error vs reference: {max_rel_error(ours.obs['llh'], ref.uns['llh']['llh']):.2e}")


if __name__ == "__main__":
    main()
