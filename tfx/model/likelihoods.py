"""Count likelihoods: per-position negative log-likelihood of the observed counts given mu.

Each takes ``(vocab_size, eps, max_counts, softplus_approx)`` so that a recipe can swap them by
name; parameters they own (a dispersion, say) live in the model's state_dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx.registry import LIKELIHOODS


def log_expm1(x: Tensor, softplus_approx: bool) -> Tensor:
    """The ZTP normaliser log(exp(x) - 1).

    ``softplus_approx`` is TranscriptFormer's: x - softplus(-x) clamped at 0, exact for large x
    only. Otherwise it is exact, x + log(1 - exp(-x)), so the ZTP sums to 1 and can be sampled
    and scored exactly. (The reference's non-approximate branch, log1p(expm1(x)), is x itself: a
    Poisson normaliser; tfx does not copy it.)
    """
    if softplus_approx:
        return torch.clamp(x - F.softplus(-x), min=0.0)
    return x + torch.log(-torch.expm1(-x))


def clip(counts: Tensor, min: float | None, max: float | None) -> Tensor:
    return counts if min is None and max is None else torch.clamp(counts, min=min, max=max)


class Likelihood(nn.Module):
    def __init__(self, vocab_size: int, eps: float = 1e-6, max_counts: float | None = None,
                 softplus_approx: bool = True):
        super().__init__()
        self.eps, self.max_counts, self.softplus_approx = eps, max_counts, softplus_approx

    def forward(self, mu: Tensor, counts: Tensor, gene_ids: Tensor) -> Tensor:
        raise NotImplementedError


@LIKELIHOODS.register("ztp")
class ZeroTruncatedPoisson(Likelihood):
    """Expressed genes have count >= 1: Poisson conditioned on non-zero (TranscriptFormer's)."""

    def forward(self, mu, counts, gene_ids):
        c = clip(counts, self.eps, self.max_counts)
        rate = mu + self.eps
        return -c * torch.log(rate) + log_expm1(rate, self.softplus_approx) + torch.lgamma(c + 1)


@LIKELIHOODS.register("poisson")
class Poisson(Likelihood):
    def forward(self, mu, counts, gene_ids):
        c = clip(counts, None, self.max_counts)
        rate = mu + self.eps
        return rate - c * torch.log(rate) + torch.lgamma(c + 1)


@LIKELIHOODS.register("negbin")
class NegativeBinomial(Likelihood):
    """Negative binomial with a learned per-gene inverse dispersion theta."""

    def __init__(self, vocab_size, eps=1e-6, max_counts=None, softplus_approx=True):
        super().__init__(vocab_size, eps, max_counts, softplus_approx)
        self.log_theta = nn.Embedding(vocab_size, 1)
        nn.init.zeros_(self.log_theta.weight)

    def forward(self, mu, counts, gene_ids):
        c = clip(counts, None, self.max_counts)
        theta = self.log_theta(gene_ids).squeeze(-1).exp()
        log_theta_mu = torch.log(theta + mu + self.eps)
        return -(
            torch.lgamma(c + theta) - torch.lgamma(theta) - torch.lgamma(c + 1)
            + theta * (torch.log(theta + self.eps) - log_theta_mu)
            + c * (torch.log(mu + self.eps) - log_theta_mu)
        )
