"""Do prompts recover the synthetic atlas's true marker programmes? AUROC on a quickstart model.

    python tools/bench/prompt_auroc.py QUICKSTART_DIR [--checkpoint DIR] [--species synth_alpha] [--cells 64 256] [--seed 0]

For each cell type of ``QUICKSTART_DIR/atlas/<species>.h5ad``, its true marker programme
(``uns["marker_programmes"]``, written by `tfx synth`) is split in two at random. The model is
prompted with one half (each gene at its mean count in the type's cells), and every other gene of
the species is scored by its probability of being in the cell, and by that probability's lift
over an unprompted cell's (log ratio). AUROC: the held-out half against all remaining genes.

The probability is estimated three ways from the same sampled cells (`sample_cells`, var order):
- ``weighted``: what `programme_presence` computes: the fraction of cells that drew the gene, each
  cell importance-weighted (``Sampled.log_weight``), the model's p(gene | prompt genes in the cell);
- ``weighted inclusion``: the per-step chances of being drawn, under the same weights (biased);
- ``unweighted inclusion``: the per-step chances over the prompted cells as drawn, without weights
  (the estimator before the weights).
The lift's denominator is the unprompted cells' mean per-step chance (no weights there: exact).
Printed per type and as means for each ``--cells``, beside the same AUROC from gene frequencies
alone (each gene's detection rate over the whole atlas), the baseline a prompt must beat, the
effective number of weighted cells (Kish) and the number of distinct cells sampled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tfx.checkpoint import load_checkpoint  # noqa: E402
from tfx.generate.prompt import effective_cells, marker_splits, presence, weights  # noqa: E402
from tfx.generate.sample import Prompt, sample_cells, species_of  # noqa: E402

ESTIMATORS = ("weighted", "weighted inclusion", "unweighted inclusion")


def estimates(sampled, candidates: list[int]) -> dict[str, np.ndarray]:
    w = weights(sampled.log_weight)
    return {"weighted": presence(sampled, candidates),
            "weighted inclusion": w @ sampled.inclusion[:, candidates],
            "unweighted inclusion": sampled.inclusion[:, candidates].mean(axis=0)}


def prompt_aurocs(quickstart: Path, checkpoint: Path, species: str, cells: int, seed: int) -> dict[str, dict]:
    """Per type: {estimator: (AUROC, AUROC of the lift)}, "frequency": AUROC, "ess": effective cells,
    "distinct": distinct cells among those sampled."""
    ckpt = load_checkpoint(checkpoint)
    sp = species_of(ckpt, species)
    adata = anndata.read_h5ad(quickstart / "atlas" / f"{species}.h5ad")

    def sample(prompt):
        return sample_cells(ckpt, sp, cells, prompt=prompt, order="var",
                            generator=torch.Generator().manual_seed(seed), inclusion=True)

    unprompted = sample(Prompt()).inclusion.mean(axis=0)
    result = {}
    for split in marker_splits(ckpt, sp, adata, seed):  # the same splits as tfx.generate.prompt.marker_recovery
        sampled, truth = sample(split.prompt), split.held_out
        row = {"frequency": roc_auc_score(truth, split.frequency),
               "ess": effective_cells(sampled.log_weight), "distinct": len({tuple(g) for g in sampled.genes})}
        for name, scores in estimates(sampled, split.candidates).items():
            lift = np.log(scores + 1e-6) - np.log(unprompted[split.candidates] + 1e-6)
            row[name] = (roc_auc_score(truth, scores), roc_auc_score(truth, lift))
        result[split.cell_type] = row
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("quickstart", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: QUICKSTART_DIR/run/export")
    p.add_argument("--species", default="synth_alpha")
    p.add_argument("--cells", type=int, nargs="+", default=[64], help="sampled cells per prompt; several: each")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for cells in args.cells:
        result = prompt_aurocs(args.quickstart, args.checkpoint or args.quickstart / "run" / "export", args.species,
                               cells, args.seed)
        print(f"--cells {cells}: AUROC of the probability / of the lift")
        print(f"  {'':<22}" + "".join(f"{name:>24}" for name in ESTIMATORS) + "  frequency  effective  distinct cells")
        for cell_type, row in result.items():
            print(f"  {cell_type:<22}" + "".join(f"{row[n][0]:>16.3f} / {row[n][1]:.3f}" for n in ESTIMATORS)
                  + f"  {row['frequency']:>9.3f}  {row['ess']:>9.1f}  {row['distinct']:>8d}")
        mean = {n: np.mean([row[n] for row in result.values()], axis=0) for n in (*ESTIMATORS, "frequency", "ess", "distinct")}
        print(f"  {'mean over ' + str(len(result)) + ' types':<22}"
              + "".join(f"{mean[n][0]:>16.3f} / {mean[n][1]:.3f}" for n in ESTIMATORS)
              + f"  {mean['frequency']:>9.3f}  {mean['ess']:>9.1f}  {mean['distinct']:>8.1f}")


if __name__ == "__main__":
    main()
