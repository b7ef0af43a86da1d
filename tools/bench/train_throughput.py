"""Training throughput of a TF-Sapiens-shaped model on one GPU: padded batches vs packed rows.

    python tools/bench/train_throughput.py                 # one H100: about 10 minutes
        [--rows N] [--steps 20] [--vocab 20000] [--synth-genes 6000] [--max-rows 64]
    python tools/bench/train_throughput.py --tiny          # a tiny model on CPU: checks that it runs

Model: 12 layers, 16 heads, 2048 wide, seq_len 2047 + 1 assay token, a frozen 2560-dim (ESM-2
sized) gene table; bf16-mixed (autocast, fp32 weights, AdamW); FlexAttention compiled (one
kernel per shape for the packed rows, whose shape never changes; a dynamic-shape kernel for the
padded batches, whose shapes do). Cells: a `tfx synth` atlas. Batch: the largest number of
2048-position rows for which a worst-case step (every row one full cell) fits, found by doubling;
both modes get that token budget. Prints useful tokens/s (gene positions that carry a loss),
cells/s, step time, peak GPU memory and MFU (tfx.train.module.model_flops_per_token at the
cells' token-weighted mean length, so that both modes are charged the same useful work).
On CPU (--tiny) attention is eager (FlexAttention has no CPU backward) and MFU is not known.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from packing import PAD, START, END, h5ad_cells


def build_model(vocab_size: int, args, device):
    from tfx.model import ModelConfig, SpecialIds, TranscriptFormer

    torch.manual_seed(0)
    if args.tiny:
        cfg = ModelConfig(embed_dim=64, num_heads=4, num_layers=2, model_dim=128, gene_head_hidden_dim=64,
                          seq_len=255, attention="eager")
        table = torch.randn(vocab_size, 32)
    else:
        cfg = ModelConfig(seq_len=2047, attention="eager")  # TF-Sapiens' sizes are the defaults
        table = torch.randn(vocab_size, 2560)
    model = TranscriptFormer(cfg, table, SpecialIds(PAD, START, END), {"assay": {"unknown": 0, "a": 1}}, 30)
    return model.to(device).train()


def attention(device, dynamic: bool):
    from tfx.model.attention import EagerAttention, FlexAttention

    return FlexAttention(dynamic=dynamic) if device.type == "cuda" else EagerAttention()


def train_step(model, opt, batch, device) -> None:
    batch = batch.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = model.losses(model(batch), batch)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def largest_rows(model, opt, device, seq_len: int, max_rows: int) -> int:
    """Most rows of seq_len + 1 positions whose worst-case step (one full cell a row) fits."""
    from tfx.tokenize.packing import pack

    model.set_attention(attention(device, dynamic=True))
    cell = (np.arange(seq_len, dtype=np.int64) + 7, np.ones(seq_len, dtype=np.float32))
    fits, rows = 0, 1
    while rows <= max_rows:
        try:
            train_step(model, opt, pack([cell] * rows, PAD, seq_len, seq_len + 1, np.ones((rows, 1))), device)
            fitted = True
        except torch.OutOfMemoryError:
            fitted = False
        gc.collect()  # after the except block, so that the failed step's tensors are free
        torch.cuda.empty_cache()
        if not fitted:
            break
        fits, rows = rows, rows * 2
        print(f"  {fits} rows fit", flush=True)
    if not fits:
        raise SystemExit("not even one full row fits on this device")
    return fits


def measure(mode: str, model, opt, source, device, args, mfu_per_token: float | None) -> dict:
    stream = iter(source)
    for _ in range(args.warmup):  # compiles happen here
        train_step(model, opt, next(stream), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds, tokens, cells, steps = 0.0, 0, 0, []
    for _ in range(args.steps):
        batch = next(stream)
        start = time.perf_counter()
        train_step(model, opt, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - start)
        tokens += int((batch.gene_ids != PAD).sum())
        cells += batch.n_cells
    seconds = sum(steps)
    result = {"mode": mode, "tokens_per_s": tokens / seconds, "cells_per_s": cells / seconds,
              "step_ms": 1e3 * np.median(steps), "tokens_per_step": tokens / args.steps,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
              "mfu": tokens * mfu_per_token / seconds if mfu_per_token else float("nan")}
    print(f"  {mode}: {result['tokens_per_s']:,.0f} useful tokens/s, {result['cells_per_s']:,.1f} cells/s, "
          f"step {result['step_ms']:.0f} ms (median), {result['tokens_per_step']:,.0f} useful tokens/step, "
          f"peak {result['peak_gib']:.1f} GiB, MFU {result['mfu']:.1%}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model on CPU, a few steps")
    ap.add_argument("--rows", type=int, default=0, help="rows of 2048 positions per batch; 0: the most that fit")
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=20000, help="gene vocabulary size (the gene head's width)")
    ap.add_argument("--synth-cells", type=int, default=4000)
    ap.add_argument("--synth-genes", type=int, default=6000)
    args = ap.parse_args()
    if args.tiny:
        args.rows, args.steps, args.warmup = args.rows or 2, min(args.steps, 3), 1
        args.vocab, args.synth_cells, args.synth_genes = 500, 200, 400

    from tfx.synth import synth_atlas
    from tfx.tokenize import Preprocessing
    from tfx.tokenize.batches import BatchSpec
    from lightning.fabric.utilities.throughput import get_available_flops
    from tfx.data.memory import CellBatches
    from tfx.recipe.schema import OptimSchema
    from tfx.train.module import adamw, model_flops_per_token

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        atlas = synth_atlas(tmp, species=1, cells=args.synth_cells, genes=args.synth_genes)
        cells, n_vocab = h5ad_cells(Path(atlas["species"]["synth_alpha"]["h5ad"]))
    model = build_model(max(args.vocab, n_vocab), args, device)
    seq_len = model.cfg.seq_len
    opt = adamw(model, OptimSchema(), total_steps=1000)["optimizer"]
    lengths = np.array([min(len(ids), seq_len) + 1 for ids, _ in cells], dtype=np.float64)
    context = (lengths**2).sum() / lengths.sum()  # the cell length the average token attends over
    peak = get_available_flops(device, torch.bfloat16) if device.type == "cuda" else None  # Lightning's table
    mfu_per_token = model_flops_per_token(model, context) / peak if peak else None  # per second
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}; model: "
          f"{model.cfg.num_layers} layers x {model.cfg.embed_dim}, {model.cfg.num_heads} heads, seq_len {seq_len}, "
          f"vocab {model.vocab_size}; {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
    print(f"cells: {len(cells)} synthetic, genes per cell median {np.median(lengths) - 1:.0f} "
          f"(5-95%: {np.percentile(lengths, 5) - 1:.0f}-{np.percentile(lengths, 95) - 1:.0f}), "
          f"token-weighted mean length {context:.0f}", flush=True)

    rows = args.rows or largest_rows(model, opt, device, seq_len, args.max_rows)
    budget = rows * (seq_len + 1)
    print(f"batch: {rows} rows of {seq_len + 1} = {budget} positions", flush=True)
    aux = np.ones((len(cells), 1), dtype=np.int64)
    tokenizer = Preprocessing(seq_len, gene_order="random")
    results = []
    for mode, row_len, dynamic in (("padded", None, True), ("packed", seq_len + 1, False)):
        model.set_attention(attention(device, dynamic))
        source = CellBatches(cells, aux, PAD, tokenizer, BatchSpec(budget, budget, row_len or 0))
        results.append(measure(mode, model, opt, source, device, args, mfu_per_token))
    padded, packed = results
    print(f"packed / padded: {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x useful tokens/s, "
          f"{packed['cells_per_s'] / padded['cells_per_s']:.2f}x cells/s")


if __name__ == "__main__":
    main()
