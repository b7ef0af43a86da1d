"""Cached (incremental) decoding vs recomputing the full forward at every step, in one run.

    python tools/bench/generate.py [--genes 512] [--cells 8] [--dim 64 --layers 2 --heads 4] [--threads N]

A causal-count-head model of pretrain/tiny's widths (seq_len genes + 1) samples cells of exactly
``--genes`` genes (--order free, [END] pushed far down by its logit so no cell stops early), once
with tfx's key/value cache (`tfx.generate.sample.sample_cells`) and once with a sampler that runs
the whole training forward over the cell so far at each position. Both use one seed, so they draw
the same cells; the script prints the speed ratio and how many genes agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from teacher import build_teacher  # noqa: E402
from tfx.checkpoint import load_checkpoint  # noqa: E402
from tfx.generate.sample import allowed_next, restrict, sample_cells, sample_ztp, species_of  # noqa: E402
from tfx.tokenize import TokenBatch  # noqa: E402


@torch.no_grad()
def sample_full_recompute(ckpt, species, n_cells: int, limit: int, generator) -> list[np.ndarray]:
    """The same sampler without a cache: every step runs the training forward over the whole cell."""
    model = ckpt.model
    pad, end = model.special.pad, model.special.end
    in_species = species.mask(model.vocab_size, "cpu")
    ids = torch.full((n_cells, 1), pad)
    counts = torch.zeros(n_cells, 1)
    drawn = torch.zeros(n_cells, model.vocab_size, dtype=torch.bool)
    last = torch.full((n_cells,), -1)
    for t in range(limit):
        hidden = model(TokenBatch(ids, counts), heads=False).hidden[:, t]
        logp = restrict(model.next_gene_logits(hidden), allowed_next(in_species, drawn, last, t, "free", limit, end),
                        1.0, None)
        gene = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        count = sample_ztp(model.count_rate(hidden, gene).float() + model.cfg.log_counts_eps, generator)
        ids[:, t], counts[:, t] = gene, count.clamp(max=ckpt.data_cfg.clip_counts)
        ids, counts = torch.cat([ids, torch.full((n_cells, 1), pad)], 1), torch.cat([counts, torch.zeros(n_cells, 1)], 1)
        drawn[torch.arange(n_cells), gene] = True
        last = gene
    return [row[:limit].numpy() for row in ids]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, default=512)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_teacher(Path(tmp) / "ckpt", n_genes=args.genes + 100, seq_len=args.genes + 1, end_bias=-30.0,
                             embed_dim=args.dim, num_layers=args.layers, num_heads=args.heads,
                             model_dim=2 * args.dim, gene_head_hidden_dim=2 * args.dim)
        ckpt = load_checkpoint(path)
    species = species_of(ckpt, "synth_alpha")
    torch.manual_seed(0)

    started = time.perf_counter()
    cached = sample_cells(ckpt, species, args.cells, order="free", max_genes=args.genes,
                          generator=torch.Generator().manual_seed(1))
    t_cached = time.perf_counter() - started
    started = time.perf_counter()
    full = sample_full_recompute(ckpt, species, args.cells, args.genes, torch.Generator().manual_seed(1))
    t_full = time.perf_counter() - started

    lengths = [len(g) for g in cached.genes]
    agree = np.mean([np.mean(a == b) for a, b in zip(cached.genes, full)])
    print(f"{args.cells} cells x {args.genes} genes (cached cells have {min(lengths)}..{max(lengths)} genes), "
          f"dim {args.dim}, {args.layers} layers, {torch.get_num_threads()} threads")
    print(f"  full forward at every step: {t_full:7.2f} s")
    print(f"  key/value cache:            {t_cached:7.2f} s")
    print(f"  cached / full speed:        {t_full / t_cached:7.1f}x   (genes drawn identically: {agree:.1%})")


if __name__ == "__main__":
    main()
