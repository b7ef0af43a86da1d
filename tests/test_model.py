"""The model's own properties: backends agree, padding does not leak, likelihoods are proper,
training lowers both losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_cells, tiny_model
from tfx.model.attention import AttentionInputs, EagerAttention, FlexAttention
from tfx.model.likelihoods import NegativeBinomial, Poisson, ZeroTruncatedPoisson
from tfx.tokenize import collate


def _attention_inputs(b, length, embed, docs=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(b, length, generator=g) > 0.2
    valid[:, 0] = True
    return AttentionInputs(
        log_counts=torch.log1p(torch.randint(0, 30, (b, length), generator=g).float() + 1e-6),
        key_valid=valid, embed_mode=embed, softcap=10.0, document_ids=docs, block_size=16,
    )


@pytest.mark.slow
@pytest.mark.parametrize("embed", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_flex_attention_equals_eager(embed, packed):
    b, h, length, d = 3, 2, 37, 8
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, length, d, generator=g) * 3 for _ in range(3))
    docs = torch.cumsum(torch.rand(b, length, generator=g) < 0.15, dim=1) if packed else None
    eager = EagerAttention()(q, k, v, _attention_inputs(b, length, embed, docs))
    flex = FlexAttention()(q, k, v, _attention_inputs(b, length, embed, docs))
    torch.testing.assert_close(flex, eager, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_valid_outputs():
    model = tiny_model().eval()
    cells = random_cells(6, max_len=9)
    aux = np.array([[1], [0], [2], [1], [1], [0]])
    short = collate(cells, 1, 15, aux)
    long = collate(cells, 1, 15, aux)
    pad = 15 - long.gene_ids.shape[1]
    long.gene_ids = torch.nn.functional.pad(long.gene_ids, (0, pad), value=1)
    long.counts = torch.nn.functional.pad(long.counts, (0, pad))
    with torch.no_grad():
        a, b = model(short, embed=True), model(long, embed=True)
    n = short.gene_ids.shape[1]
    torch.testing.assert_close(model.cell_embeddings(a), model.cell_embeddings(b))
    torch.testing.assert_close(model.cell_nll(a, short), model.cell_nll(b, long))
    valid = a.valid
    torch.testing.assert_close(a.hidden[valid], b.hidden[:, :n][valid])


@pytest.mark.parametrize("cls", [ZeroTruncatedPoisson, Poisson, NegativeBinomial])
def test_likelihoods_are_normalised(cls):
    """exp(-nll) sums to 1 over the support (ZTP: counts >= 1). The reference's ZTP normaliser
    approximates log(e^mu - 1) by mu - softplus(-mu) clamped at 0 (tfx keeps it, for parity),
    which is exact only for large mu."""
    lik = cls(vocab_size=5, eps=0.0, max_counts=None)
    mu = torch.tensor([7.5, 12.0, 20.0]) if cls is ZeroTruncatedPoisson else torch.tensor([0.3, 2.0, 7.5])
    first = 1 if cls is ZeroTruncatedPoisson else 0
    counts = torch.arange(first, 200, dtype=torch.float32)
    total = torch.zeros(3)
    for c in counts:
        total += torch.exp(-lik(mu, c.expand(3), torch.zeros(3, dtype=torch.long)))
    torch.testing.assert_close(total, torch.ones(3), rtol=1e-4, atol=1e-4)


def test_poisson_and_negbin_match_torch_distributions():
    mu, c = torch.tensor([0.5, 3.0, 12.0]), torch.tensor([0.0, 2.0, 20.0])
    ids = torch.tensor([0, 1, 2])
    p = Poisson(3, eps=0.0)(mu, c, ids)
    torch.testing.assert_close(p, -torch.distributions.Poisson(mu).log_prob(c))
    nb = NegativeBinomial(3, eps=0.0)
    with torch.no_grad():
        nb.log_theta.weight[:, 0] = torch.tensor([0.0, 1.0, -1.0])
    theta = nb.log_theta.weight[:, 0].exp()
    expected = -torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(c)
    torch.testing.assert_close(nb(mu, c, ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("likelihood", ["ztp", "poisson", "negbin"])
def test_training_lowers_both_losses(likelihood):
    model = tiny_model(likelihood=likelihood).train()
    cells = random_cells(32, seed=1)
    batch = collate(cells, 1, 15, np.ones((32, 1), dtype=np.int64))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(40):
        losses = model.losses(model(batch), batch)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["gene_id"].item() < 0.8 * first["gene_id"]
    assert losses["count"].item() < first["count"]
    assert model.gene_embeddings.embedding.weight.grad is None  # the protein table stays frozen
