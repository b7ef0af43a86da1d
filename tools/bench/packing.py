"""Packed vs padded training throughput: useful tokens/s of one model on the same cells, one run.

    python tools/bench/packing.py [--row-len 2048] [--token-budget 8192] [--max-cells 64]
        [--dim 128 --layers 2 --heads 4] [--epochs 1] [--synth-cells 1000] [--threads N]

Cells: real mouse cells (../shared/data/mouse_val.h5ad; skipped with a message when absent) and
a `tfx synth` atlas (1,000 cells of ~30 to ~1,300 genes). A tiny model (seq_len 2047, one assay
token) takes training steps (forward, backward, AdamW) on CellBatches' padded batches (token-budget
batches of cells sorted by length within windows) and on its packed rows (first-fit-decreasing,
token_budget // row_len rows a batch), alternating, each over the same epochs of cells. Useful
tokens are the gene positions that carry a loss; both modes see the same ones. Attention is the
eager backend (FlexAttention has no backward on CPU; tools/bench/train_throughput.py is the GPU
benchmark).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
MOUSE = ROOT.parent / "shared" / "data" / "mouse_val.h5ad"
N_SPECIAL, PAD, START, END = 7, 1, 2, 3


def h5ad_cells(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Each cell's expressed genes as vocabulary ids (specials first) and counts; the vocab size."""
    x = anndata.read_h5ad(path).X.tocsr()
    cells = [(x.indices[a:b].astype(np.int64) + N_SPECIAL, x.data[a:b].astype(np.float32))
             for a, b in zip(x.indptr[:-1], x.indptr[1:])]
    return cells, x.shape[1] + N_SPECIAL


def tiny_model(vocab_size: int, args):
    from tfx.model import ModelConfig, SpecialIds, TranscriptFormer

    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=args.dim, num_heads=args.heads, num_layers=args.layers, model_dim=2 * args.dim,
                      gene_head_hidden_dim=args.dim, seq_len=2047, dropout=0.0, attention="eager")
    table = torch.randn(vocab_size, 32)
    return TranscriptFormer(cfg, table, SpecialIds(PAD, START, END), {"assay": {"unknown": 0, "a": 1}}, 30)


def compare(name: str, cells, vocab_size: int, args) -> None:
    from tfx.tokenize import Preprocessing
    from tfx.tokenize.batches import BatchSpec
    from tfx.data.memory import CellBatches
    from tfx.recipe.schema import OptimSchema
    from tfx.train.module import adamw

    model = tiny_model(vocab_size, args).train()
    opt = adamw(model, OptimSchema(), total_steps=1000)["optimizer"]
    aux = np.ones((len(cells), 1), dtype=np.int64)
    tokenizer = Preprocessing(2047, gene_order="random")
    sources = {
        "padded": CellBatches(cells, aux, PAD, tokenizer, BatchSpec(args.token_budget, args.max_cells)),
        "packed": CellBatches(cells, aux, PAD, tokenizer, BatchSpec(args.token_budget, args.max_cells, args.row_len)),
    }
    steps = {mode: args.epochs * len(s._epoch_batches(0)) for mode, s in sources.items()}
    streams = {mode: iter(s) for mode, s in sources.items()}

    def step(mode: str) -> tuple[float, float, int, int]:
        """(wall s, CPU s, useful tokens, positions computed) of one training step."""
        batch = next(streams[mode])
        wall, cpu = time.perf_counter(), time.process_time()
        loss = model.losses(model(batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        positions = batch.gene_ids.numel() + (0 if batch.cell_ids is not None else batch.gene_ids.shape[0])
        return time.perf_counter() - wall, time.process_time() - cpu, int((batch.gene_ids != PAD).sum()), positions

    for mode in sources:  # warm-up, not counted
        step(mode)
    totals = {mode: np.zeros(4) for mode in sources}
    done = dict.fromkeys(sources, 0)
    while any(done[m] < steps[m] for m in sources):  # alternate, so that load on the machine hits both
        for mode in sources:
            if done[mode] < steps[mode]:
                totals[mode] += step(mode)
                done[mode] += 1
    lengths = np.array([min(len(ids), 2047) for ids, _ in cells])
    print(f"{name}: {len(cells)} cells, genes per cell median {np.median(lengths):.0f} "
          f"(5-95%: {np.percentile(lengths, 5):.0f}-{np.percentile(lengths, 95):.0f}, max {lengths.max()})")
    for m, (wall, cpu, useful, positions) in totals.items():
        print(f"  {m}: {steps[m]} steps, {useful / wall:,.0f} useful tokens/s ({useful / cpu:,.0f} per CPU s), "
              f"{useful / positions:.0%} of positions useful, {wall / steps[m] * 1e3:.0f} ms/step")
    share = {m: t[2] / t[3] for m, t in totals.items()}
    print(f"  ceiling from padding alone: {share['packed'] / share['padded']:.2f}x")
    rate = {m: t[2] / t[0] for m, t in totals.items()}
    cpu_rate = {m: t[2] / t[1] for m, t in totals.items()}
    print(f"  packed / padded: {rate['packed'] / rate['padded']:.2f}x tokens/s "
          f"({cpu_rate['packed'] / cpu_rate['padded']:.2f}x per CPU second)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row-len", type=int, default=2048, help="packed row length (seq_len 2047 + 1 assay token)")
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--max-cells", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--synth-cells", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"model: {args.layers} layers x {args.dim}, {args.heads} heads, eager attention; "
          f"token budget {args.token_budget}, max {args.max_cells} cells (padded), rows of {args.row_len} (packed); "
          f"{torch.get_num_threads()} CPU threads")

    if MOUSE.exists():
        compare("mouse_val (real)", *h5ad_cells(MOUSE), args)
    else:
        print(f"real data {MOUSE} is absent: skipping the mouse cells")
    from tfx.synth import synth_atlas

    with tempfile.TemporaryDirectory() as tmp:
        atlas = synth_atlas(tmp, species=1, cells=args.synth_cells, genes=2000)
        compare("tfx synth atlas", *h5ad_cells(Path(atlas["species"]["synth_alpha"]["h5ad"])), args)


if __name__ == "__main__":
    main()
