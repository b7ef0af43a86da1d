"""How much cell identity does tiny pretraining put into the embeddings of the synthetic atlas?

    python tools/bench/synth_embeddings.py [--steps 300] [--token-budget 4096] [--order random]
        [--embed-order var_order] [--workdir DIR] [hydra overrides ...]

Writes the `tfx synth` atlas (3 species x 600 cells), pretrains `recipes/pretrain/tiny` on it for
``--steps`` and for 1 step (the random-feature baseline), embeds every cell with genes in
``--embed-order`` (`var_order` is the reference's inference; `expression_sorted` matches a model
trained in that order), and prints 5-fold CV macro-F1 (kNN, logistic regression) on cell type for
both, for the reference's pooling (sum over positions / seq_len) and for the mean over positions,
beside the PCA-of-log-normalised-counts baseline on the same cells.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata
import numpy as np
import scipy.sparse as sp
import torch

from tfx.checkpoint import load_checkpoint
from tfx.data.anndata import CellReader
from tfx.eval.inputs import pca_of_log_counts
from tfx.eval.probes import label_prediction
from tfx.synth import synth_atlas
from tfx.tokenize import Preprocessing, collate, length_batches
from tfx.recipe import compose
from tfx.train.run import train


@torch.no_grad()
def embeddings(export: Path, files: list[Path], order: str) -> dict[str, np.ndarray]:
    """{pooling: [cells, E]} for every cell of ``files``, in file order."""
    ckpt = load_checkpoint(export)
    model, seq_len = ckpt.model.eval(), ckpt.model_cfg.seq_len
    # ordered before truncation at seq_len, as training tokenizes
    tokenizer = Preprocessing(seq_len, order, ckpt.data_cfg.clip_counts, ckpt.data_cfg.normalize_to_scale)
    pooled = {"reference (sum / seq_len)": [], "mean over positions": []}
    for path in files:
        reader = CellReader(path, ckpt.vocab.lookup, aux_vocabs=ckpt.aux_vocabs)
        for chunk in reader.chunks(tokenize=tokenizer):
            cells, aux = chunk.cells, chunk.aux_ids
            parts = {name: np.zeros((len(cells), ckpt.model_cfg.embed_dim), np.float32) for name in pooled}
            for idx in length_batches(np.array([len(ids) + 1 for ids, _ in cells]), 16384, 256):
                batch = collate([cells[i] for i in idx], ckpt.vocab.pad, seq_len, None if aux is None else aux[idx])
                out = model(batch, embed=True, heads=False)
                total = (out.hidden * out.valid.unsqueeze(-1)).sum(1)
                parts["reference (sum / seq_len)"][idx] = (total / seq_len).numpy()
                parts["mean over positions"][idx] = (total / out.valid.sum(1, keepdim=True).clamp(min=1)).numpy()
            for name in pooled:
                pooled[name].append(parts[name])
        reader.close()
    return {name: np.concatenate(p) for name, p in pooled.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--order", default="random", help="training gene order: random | var_order | expression_sorted")
    ap.add_argument("--embed-order", default="var_order", help="gene order when embedding")
    ap.add_argument("--workdir", default="synth_embeddings")
    args, overrides = ap.parse_known_args()

    work = Path(args.workdir)
    atlas = synth_atlas(work / "atlas", species=3, cells=600, seed=0)["species"]
    files = [Path(s["h5ad"]) for s in atlas.values()]
    adatas = [anndata.read_h5ad(f) for f in files]
    labels = np.concatenate([a.obs["cell_type"].astype(str).to_numpy() for a in adatas])
    genes = ",".join(s["gene_h5"] for s in atlas.values())
    counts = sp.block_diag([a.X for a in adatas], format="csr")  # species have their own genes
    rows = {"PCA of log-normalised counts": label_prediction(pca_of_log_counts(counts), labels)}
    for steps in (args.steps, 1):
        run = work / f"run_{steps}"
        started = time.perf_counter()
        export = train(compose("pretrain/tiny", [
            "data=h5ad", f"data.files=[{','.join(map(str, files))}]", f"vocab.embeddings=[{genes}]",
            f"output_dir={run}", "resume=null", f"trainer.max_steps={steps}", f"data.gene_order={args.order}",
            f"data.token_budget={args.token_budget}", "trainer.val_check_interval=1000000", *overrides]))
        seconds = time.perf_counter() - started
        for pooling, features in embeddings(export, files, args.embed_order).items():
            rows[f"tiny, {steps} steps ({seconds:.0f} s), {pooling}"] = label_prediction(features, labels)
    print(f"training order {args.order}, embedding order {args.embed_order}, token budget {args.token_budget}")
    print(f"{'representation':<62} {'kNN macro-F1':>13} {'logistic macro-F1':>18}")
    for name, r in rows.items():
        print(f"{name:<62} {r['knn']['macro_f1']:>13.3f} {r['logistic']['macro_f1']:>18.3f}")


if __name__ == "__main__":
    main()
