"""Sequence packing: a packed cell's outputs, losses and gradients are those of the cell unpacked;
rows are filled first-fit-decreasing; CellBatches and the recipes emit packed batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import random_cells, tiny_model, write_h5ad
from tfx.model.attention import soft_cap
from tfx.tokenize import Preprocessing, collate
from tfx.tokenize.batches import BatchSpec
from tfx.tokenize.packing import cell_length, first_fit_decreasing, pack
from tfx.data.memory import CellBatches

SEQ_LEN = 15  # tiny_model's


def _cells():
    """Cells of 0 to 15 genes: one fills seq_len (its last target becomes [END]), one has none."""
    cells = random_cells(14, max_len=12, seed=3)
    cells[0] = (np.arange(7, 7 + SEQ_LEN), np.arange(1, SEQ_LEN + 1, dtype=np.float32))
    cells[5] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    aux = np.array([[1], [0], [2], [1], [2], [1], [0]] * 2)  # 0: the unknown assay, a masked key
    return cells, aux


def _per_cell_loss_sums(model, out, batch):
    """Per cell: (count NLL sum, next-gene CE sum, genes predicted)."""
    ids, _ = model.targets(batch)
    logits = soft_cap(out.gene_logits.float(), model.cfg.softcap)
    ce = F.cross_entropy(logits.transpose(1, 2), ids.masked_fill(out.gene_masked, -100), reduction="none")
    terms = torch.stack([model.position_nll(out, batch), ce, (~out.gene_masked).float()], dim=-1)
    if out.cell_ids is None:
        return terms.sum(dim=1)
    keep = out.cell_ids >= 0
    return terms.new_zeros(batch.n_cells, 3).index_add(0, out.cell_ids[keep], terms[keep])


@pytest.mark.parametrize("likelihood", ["ztp", "negbin"])
def test_packed_losses_and_gradients_equal_unpacked(likelihood):
    model = tiny_model(likelihood=likelihood).train()
    cells, aux = _cells()
    packed = pack(cells, 1, SEQ_LEN, 40, aux)
    assert packed.gene_ids.shape[0] < len(cells) // 2  # several cells share a row

    # every cell's loss is its loss alone
    sums = _per_cell_loss_sums(model, model(packed), packed)
    for c, cell in enumerate(cells):
        alone = collate([cell], 1, SEQ_LEN, aux[c : c + 1])
        torch.testing.assert_close(sums[c], _per_cell_loss_sums(model, model(alone), alone)[0], rtol=1e-5, atol=1e-5)

    # the batch's losses and gradients are those of the same cells in one padded batch
    padded = collate(cells, 1, SEQ_LEN, aux)
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        losses = model.losses(model(batch), batch)
        losses["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if batch is padded:
            expected = {k: v.detach() for k, v in losses.items()}
    for k, v in losses.items():
        torch.testing.assert_close(v.detach(), expected[k], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_packed_embeddings_and_llh_equal_unpacked():
    model = tiny_model().eval()
    cells, aux = _cells()
    padded, packed = collate(cells, 1, SEQ_LEN, aux), pack(cells, 1, SEQ_LEN, 33, aux)
    with torch.no_grad():
        a, b = model(padded, embed=True), model(packed, embed=True)
    torch.testing.assert_close(model.cell_embeddings(b), model.cell_embeddings(a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.cell_nll(b, packed), model.cell_nll(a, padded), rtol=1e-5, atol=1e-6,
                               equal_nan=True)  # NaN: the cell without genes, as unpacked


def test_first_fit_decreasing_fills_rows_in_order():
    lengths = np.array([3, 5, 1, 4, 3, 2])
    rows = first_fit_decreasing(lengths, 6)
    assert [r.tolist() for r in rows] == [[1, 2], [3, 5], [0, 4]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=300)
    rows = first_fit_decreasing(lengths, 64)
    assert sorted(np.concatenate(rows).tolist()) == list(range(300))
    assert max(lengths[r].sum() for r in rows) <= 64
    assert len(rows) <= np.ceil(lengths.sum() / 64) * 1.1  # near the lower bound on this distribution


def test_pack_layout():
    cells = [(np.array([9, 8]), np.array([2.0, 5.0], dtype=np.float32)),
             (np.array([7]), np.array([1.0], dtype=np.float32))]
    batch = pack(cells, 1, SEQ_LEN, 8, np.array([[2], [1]]))
    assert cell_length(2, SEQ_LEN, 1) == 4
    # cell 0: aux, [START] -> 9, 9 -> 8, 8 -> nothing; cell 1: aux, [START] -> 7, 7 -> nothing; padding
    assert batch.gene_ids.tolist() == [[1, 9, 8, 1, 1, 7, 1, 1]]
    assert batch.counts.tolist() == [[0, 2, 5, 0, 0, 1, 0, 0]]
    assert batch.cell_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, -1]]
    assert batch.positions.tolist() == [[-1, 0, 1, 2, -1, 0, 1, 0]]
    assert batch.n_cells == 2
    with pytest.raises(ValueError, match="at least seq_len"):
        pack(cells, 1, SEQ_LEN, 3, np.array([[2], [1]]))


def test_cell_batches_pack_every_cell_once_in_fixed_shapes():
    cells = random_cells(150, max_len=SEQ_LEN, seed=4)
    aux = np.ones((150, 1), dtype=np.int64)
    labels = np.arange(150)
    prep, spec = Preprocessing(SEQ_LEN, gene_order="var_order"), BatchSpec(token_budget=96, max_cells=4, pack_row_len=32)
    source = CellBatches(cells, aux, 1, prep, spec, labels=labels, window=10)
    n_batches = len(source._epoch_batches(0))
    seen, it = [], iter(source)
    for _ in range(n_batches):
        batch = next(it)
        target = batch.labels
        assert batch.gene_ids.shape == (3, 32)  # token_budget // pack_row_len rows, always
        for k, c in enumerate(target.tolist()):  # labels follow the batch's cells
            genes = batch.gene_ids[(batch.cell_ids == k) & (batch.positions >= 0)]
            assert genes[: len(cells[c][0])].tolist() == cells[c][0].tolist()
        seen += target.tolist()
    assert sorted(seen) == list(range(150))  # one epoch: every cell once
    resumed = CellBatches(cells, aux, 1, prep, spec, labels=labels, window=10)
    resumed.load_state_dict({"batches": 3})
    expected = list(zip(range(4), iter(source)))[3][1]
    got = next(iter(resumed))
    assert torch.equal(got.gene_ids, expected.gene_ids) and torch.equal(got.labels, expected.labels)
    with pytest.raises(ValueError, match="pack_row_len 8 is shorter"):
        CellBatches(cells, aux, 1, prep, BatchSpec(pack_row_len=8))


@pytest.mark.parametrize("source", ["h5ad", "shards"])
def test_pretraining_recipe_trains_on_packed_rows(tmp_path, source):
    from tfx.data.shards import write_shards
    from tfx.recipe import build, compose
    from tfx.train.run import train
    from tfx.vocab import write_gene_embeddings

    rng = np.random.default_rng(0)
    genes = [f"ENSPACK{i:011d}" for i in range(60)]
    write_gene_embeddings(tmp_path / "g_gene.h5", genes, rng.normal(size=(60, 8)).astype(np.float32))
    x = (rng.random((48, 60)) < rng.uniform(0.05, 0.6, (48, 1))) * rng.integers(1, 9, (48, 60))
    obs = pd.DataFrame({"assay": "10x 3' v3"}, index=[f"c{i}" for i in range(48)])
    write_h5ad(tmp_path / "cells.h5ad", genes, x, obs)
    out = tmp_path / "run"
    data = ["data=h5ad", f"data.files=[{tmp_path / 'cells.h5ad'}]"]
    if source == "shards":
        write_shards([tmp_path / "cells.h5ad"], "homo_sapiens", tmp_path / "shards", cells_per_shard=12, processes=1)
        data = ["data=shards", f"data.shards=[{tmp_path / 'shards'}]"]
    cfg = compose("pretrain/tiny", [
        *data, f"vocab.embeddings=[{tmp_path / 'g_gene.h5'}]",
        f"output_dir={out}", "trainer.max_steps=4", "model.embed_dim=16", "model.model_dim=32", "model.seq_len=63",
        "data.pack=true", "data.token_budget=256", "trainer.log_every_n_steps=1"])
    source, _ = build(cfg).sources(0, 1)
    batch = next(iter(source))
    assert batch.cell_ids is not None and batch.gene_ids.shape == (4, 64)  # rows of seq_len + the assay token
    train(cfg)
    (metrics_csv,) = (out / "logs").glob("*/metrics.csv")  # one start
    metrics = pd.read_csv(metrics_csv)
    assert np.isfinite(metrics["train/loss"].dropna()).all() and len(metrics["train/loss"].dropna()) == 4
    assert (out / "export" / "model_weights.pt").exists()
