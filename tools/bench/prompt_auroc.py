"""Do prompts recover the synthetic atlas's true marker programmes? AUROC on a quickstart model.

    python tools/bench/prompt_auroc.py QUICKSTART_DIR [--checkpoint DIR] [--species synth_alpha] [--cells 64] [--seed 0]

For each cell type of ``QUICKSTART_DIR/atlas/<species>.h5ad``, its true marker programme
(``uns["marker_programmes"]``, written by `tfx synth`) is split in two at random. The model is
prompted with one half (each gene at its mean count in the type's cells), and every other gene of
the species is scored by its probability of being in the cell (`tfx.generate.prompt.programme_scores`),
and by that probability's lift over an unprompted cell's (log ratio). AUROC: the held-out half
against all remaining genes. Prints both per type and their means, beside the same AUROC from
gene frequencies alone (each gene's detection rate over the whole atlas), the baseline a prompt
must beat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata
import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tfx.checkpoint import load_checkpoint  # noqa: E402
from tfx.generate.prompt import programme_scores  # noqa: E402
from tfx.generate.sample import species_of  # noqa: E402


def prompt_aurocs(quickstart: Path, checkpoint: Path, species: str, cells: int, seed: int
                  ) -> dict[str, tuple[float, float, float]]:
    ckpt = load_checkpoint(checkpoint)
    sp = species_of(ckpt, species)
    adata = anndata.read_h5ad(quickstart / "atlas" / f"{species}.h5ad")
    column = {g: i for i, g in enumerate(adata.var["ensembl_id"])}
    detected = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    rng = np.random.default_rng(seed)
    unprompted = programme_scores(ckpt, sp, [], list(sp.ids), cells=cells, seed=seed)
    position = {int(v): i for i, v in enumerate(sp.ids)}
    result = {}
    for cell_type, programme in adata.uns["marker_programmes"].items():
        genes = [g for g in rng.permutation(programme) if g in ckpt.vocab.index]
        prompt, held_out = genes[: len(genes) // 2], set(genes[len(genes) // 2 :])
        mine = (adata.obs["cell_type"] == cell_type).to_numpy()
        counts = np.asarray(adata.X[mine][:, [column[g] for g in prompt]].mean(axis=0)).ravel()
        ids = [ckpt.vocab.index[g] for g in prompt]
        candidates = [g for g in sp.genes if g not in set(prompt)]
        cand_ids = [ckpt.vocab.index[g] for g in candidates]
        scores = programme_scores(ckpt, sp, ids, cand_ids, counts=list(np.maximum(1.0, np.round(counts))),
                                  cells=cells, seed=seed)
        truth = np.array([g in held_out for g in candidates])
        baseline = detected[[column[g] for g in candidates]]
        lift = np.log(scores + 1e-6) - np.log(unprompted[[position[i] for i in cand_ids]] + 1e-6)
        result[cell_type] = (roc_auc_score(truth, scores), roc_auc_score(truth, lift), roc_auc_score(truth, baseline))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("quickstart", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: QUICKSTART_DIR/run/export")
    p.add_argument("--species", default="synth_alpha")
    p.add_argument("--cells", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = prompt_aurocs(args.quickstart, args.checkpoint or args.quickstart / "run" / "export", args.species,
                           args.cells, args.seed)
    for cell_type, (auroc, lift, base) in result.items():
        print(f"  {cell_type:<22} AUROC {auroc:.3f}, of the lift {lift:.3f}   (gene frequency alone {base:.3f})")
    auroc, lift, base = np.mean(list(result.values()), axis=0)
    print(f"mean AUROC over {len(result)} types: {auroc:.3f}, of the lift {lift:.3f}   "
          f"(gene frequency alone {base:.3f})")


if __name__ == "__main__":
    main()
