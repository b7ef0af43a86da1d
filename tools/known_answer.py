"""Known-answer training: does training recover a distribution we know?

A teacher (a tiny causal-count-head model with the exact ZTP normaliser, its gene-id head scaled
so that its distribution is far from gene frequencies) samples training and held-out cells with
`tfx generate --order var`. A student of the same shape is trained from scratch with `tfx shard`
and `tfx train pretrain/tiny`. On the held-out cells, the student's mean `nll` (`tfx infer
--outputs nll`) should approach the sampled distribution's entropy estimate, mean(-log_prob):
no model can do better in expectation, and the student after 1 step is far from it.

The held-out cells are also scored by the sampler's incremental decoder (`decode_nll`), where no
position can see a later one: it must agree with `tfx infer`'s full forward. A model that saw
its targets in training (a broken causal mask, targets shifted by one) disagrees there.

Every stage runs through the `tfx` command's own code (`tfx.cli.main`). Used by
tools/bench/known_answer.py (the learning curve) and tests/test_known_answer.py (a short run).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import anndata
import numpy as np

from teacher import build_teacher
from tfx.checkpoint import load_checkpoint
from tfx.cli import main
from tfx.generate.sample import species_of
from tfx.generate.score import decode_nll

SPECIES = "synth_alpha"
ASSAY = "10x 3' v3"
TINY = dict(embed_dim=64, num_heads=4, num_layers=2, model_dim=128, seq_len=255, gene_head_hidden_dim=128)


@dataclass
class KnownAnswer:
    entropy: float  # mean(-log_prob) of the held-out cells under the teacher's sampled distribution
    entropy_se: float  # its standard error
    nll: dict[int, float] = field(default_factory=dict)  # training steps -> the student's mean held-out nll
    decoded: dict[int, float] = field(default_factory=dict)  # the same, scored by incremental decoding
    genes_per_cell: float = 0.0

    def closure(self, steps: int, first: int = 1, decoded: bool = False) -> float:
        """Share of the gap between the student after ``first`` steps and the entropy that ``steps`` closed."""
        nll = self.decoded if decoded else self.nll
        return (nll[first] - nll[steps]) / (nll[first] - self.entropy)


def _run(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"tfx {' '.join(map(str, argv))} exited with {code}")


def make_data(work: Path, train_cells: int, heldout_cells: int, seed: int = 0) -> tuple[Path, Path, Path, Path]:
    """The teacher, its sampled cells as shards (training) and an h5ad (held out)."""
    teacher = build_teacher(work / "teacher", species=SPECIES, n_genes=300, seed=seed, scale=3.0, end_bias=-4.0,
                            early_bias=10.0, **TINY)
    sample = ["generate", "--checkpoint", teacher, "--species", SPECIES, "--order", "var", "--assay", ASSAY]
    _run([*sample, "--n-cells", train_cells, "--seed", seed + 1, "--output", work / "train.h5ad"])
    _run([*sample, "--n-cells", heldout_cells, "--seed", seed + 2, "--output", work / "heldout.h5ad"])
    _run(["shard", "--input", work / "train.h5ad", "--species", SPECIES, "--output", work / "shards",
          "--cells-per-shard", max(1, train_cells // 4), "--processes", 1])
    return teacher, work / "shards", work / "heldout.h5ad", teacher / "vocabs" / f"{SPECIES}_gene.h5"


def train_student(work: Path, shards: Path, gene_file: Path, steps: int, schedule: int, seed: int = 0,
                  extra: tuple[str, ...] = ()) -> Path:
    """`tfx train pretrain/tiny` from scratch for ``steps`` steps of an LR schedule ``schedule`` long."""
    out = work / f"student_{steps}"
    _run(["train", "pretrain/tiny", f"data.shards={shards}", f"vocab.embeddings=[{gene_file}]",
          "model.mu_link_fn=softplus", "model.softplus_approx=false", "model.attention=eager",
          f"output_dir={out}", f"trainer.max_steps={steps}", f"optim.total_steps={schedule}", f"seed={seed}",
          "trainer.accelerator=cpu", f"trainer.val_check_interval={max(steps, 1)}",
          f"trainer.checkpoint_every_n_steps={max(steps, 1)}", "data.token_budget=4096", *extra])
    return out / "export"


def heldout_nll(export: Path, heldout: Path, work: Path, name: str) -> tuple[float, float]:
    """Mean held-out nll from `tfx infer --outputs nll`, and from the incremental decoder."""
    out = work / f"nll_{name}.h5ad"
    _run(["infer", "--checkpoint", export, "--data", heldout, "--output", out, "--outputs", "nll", "--device", "cpu"])
    ckpt = load_checkpoint(export)
    ids = species_of(ckpt, SPECIES).ids
    X = anndata.read_h5ad(heldout).X.tocsr()
    cells = [(ids[X[i].indices], X[i].data) for i in range(X.shape[0])]  # var order: as drawn
    return float(anndata.read_h5ad(out).obs["nll"].mean()), float(decode_nll(ckpt, cells, assay=ASSAY).mean())


def known_answer(work: Path, *, train_cells: int, heldout_cells: int, steps: list[int], seed: int = 0,
                 progress=None) -> KnownAnswer:
    work.mkdir(parents=True, exist_ok=True)
    _, shards, heldout, gene_file = make_data(work, train_cells, heldout_cells, seed)
    cells = anndata.read_h5ad(heldout)
    minus = -cells.obs["log_prob"].to_numpy()
    result = KnownAnswer(float(minus.mean()), float(minus.std(ddof=1) / np.sqrt(len(minus))),
                         genes_per_cell=float(cells.obs["n_genes"].mean()))
    for n in sorted({1, *steps}):
        result.nll[n], result.decoded[n] = heldout_nll(train_student(work, shards, gene_file, n, max(steps), seed),
                                                       heldout, work, str(n))
        if progress:
            progress(n, result)
    return result
