"""Fine-tuning on real cells, served: what each way of predicting cell types costs and gives.

    python tools/bench/finetune.py [--pretrain-steps 1500] [--finetune-steps 300] [--workdir DIR]

On ../shared/data/mouse_val.h5ad (classes under 10 cells dropped, a fixed stratified 80/20 split),
a tiny model is pretrained on the training 80% (random stand-in gene embeddings: no ESM-2 weights
can be fetched here). Then, scored by macro-F1 on the held-out 20%:
  (a) fine-tuning (finetune/tiny, backbone partial), predictions served by `tfx infer --outputs predictions`;
  (b) LoRA fine-tuning (rank 8, merged export), served the same way;
  (c) a logistic-regression probe on the pretrained model's frozen embeddings;
  (d) logistic regression on a PCA of log-normalised counts.
Each training run is its own `tfx train` process, so its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd



def tfx_process(args: list[str], log: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, output) of one `tfx` command in its own process."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tfx.cli", *args], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"tfx {' '.join(args[:2])} failed; see {log}:\n{text[-2000:]}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, text


def step_seconds(run: Path, steps: int, seconds: float) -> float:
    """Mean seconds per optimizer step from the throughput monitor's log, or wall time / steps."""
    metrics = pd.concat(pd.read_csv(f) for f in (run / "logs").glob("*/metrics.csv"))
    rate = metrics.get("train/device/batches_per_sec", pd.Series(dtype=float)).dropna()
    return float(1 / rate.median()) if len(rate) else seconds / steps


def macro_f1(truth, predicted) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro"))


def logistic(train_x, train_y, test_x):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return model.fit(train_x, train_y).predict(test_x), model[-1].coef_.size + model[-1].intercept_.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    from mouse import mouse_cells

    work = Path(args.workdir or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    cells, gene_file = mouse_cells(work)
    train_idx, test_idx = train_test_split(np.arange(cells.n_obs), test_size=0.2, random_state=0,
                                           stratify=cells.obs["cell_type"])
    train_file, test_file = work / "train.h5ad", work / "test.h5ad"
    cells[train_idx].copy().write_h5ad(train_file)
    cells[test_idx].copy().write_h5ad(test_file)
    y_train, y_test = cells.obs["cell_type"].to_numpy()[train_idx], cells.obs["cell_type"].to_numpy()[test_idx]
    print(f"{cells.n_obs} cells of {len(set(y_train))} types: {len(train_idx)} train, {len(test_idx)} held out",
          flush=True)

    common = ["data=h5ad", "data.token_budget=1024", "data.gene_order=var_order", "data.val_files=[]"]
    base = work / "pretrain"
    seconds, _, _ = tfx_process(["train", "pretrain/tiny", *common, f"data.files=[{train_file}]",
                                 f"vocab.embeddings=[{gene_file}]", f"output_dir={base}", "optim.lr=2e-3",
                                 f"trainer.max_steps={args.pretrain_steps}"], work / "pretrain.log")
    print(f"pretrained {args.pretrain_steps} steps in {seconds:.0f} s", flush=True)

    rows = []
    for key, name, extra in [("finetune", "(a) fine-tuning (backbone partial), served", []),
                             ("lora", "(b) LoRA rank 8 (merged), served", ["finetune.adapter=lora", "finetune.lora.rank=8"])]:
        run = work / key
        seconds, peak, log = tfx_process(
            ["train", "finetune/tiny", *common, f"init={base / 'export'}", f"data.files=[{train_file}]",
             f"output_dir={run}", f"trainer.max_steps={args.finetune_steps}", "optim.lr=1e-3",
             "optim.warmup_steps=30", "trainer.log_every_n_steps=5", *extra], work / f"{key}.log")
        trainable = int(re.search(r"fine-tuning (\d+) parameters", log).group(1))
        tfx_process(["infer", "--checkpoint", str(run / "export"), "--data", str(test_file), "--output",
                     str(run / "pred.h5ad"), "--outputs", "predictions"], work / f"{key}_infer.log")
        predicted = anndata.read_h5ad(run / "pred.h5ad").obs["cell_type_pred"].astype(str).to_numpy()
        rows.append((name, macro_f1(y_test, predicted), trainable,
                     f"{1000 * step_seconds(run, args.finetune_steps, seconds):.0f} ms", f"{peak:.0f} MiB"))
        print(f"{name}: {seconds:.0f} s", flush=True)

    embedded = {}
    for split, path in (("train", train_file), ("test", test_file)):
        tfx_process(["infer", "--checkpoint", str(base / "export"), "--data", str(path), "--output",
                     str(work / f"emb_{split}.h5ad")], work / f"embed_{split}.log")
        embedded[split] = anndata.read_h5ad(work / f"emb_{split}.h5ad").obsm["embeddings"]
    started = time.perf_counter()
    predicted, n = logistic(embedded["train"], y_train, embedded["test"])
    rows.append(("(c) logistic probe on frozen embeddings", macro_f1(y_test, predicted), n,
                 f"fit {time.perf_counter() - started:.1f} s", "-"))

    counts = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    log_norm = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    pca = PCA(50, random_state=0).fit(log_norm[train_idx])
    started = time.perf_counter()
    predicted, n = logistic(pca.transform(log_norm[train_idx]), y_train, pca.transform(log_norm[test_idx]))
    rows.append(("(d) logistic on PCA(50) of log-normalised counts", macro_f1(y_test, predicted), n,
                 f"fit {time.perf_counter() - started:.1f} s", "-"))

    print("\n| predictor | held-out macro-F1 | trainable parameters | step time | peak memory |\n|---|---|---|---|---|")
    for name, f1, n, step, peak in rows:
        print(f"| {name} | {f1:.3f} | {n:,} | {step} | {peak} |")


if __name__ == "__main__":
    main()
