"""Output heads: the gene-identity head and the count head coupled to the current gene."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx.model.layers import MLP, masked_softmax
from tfx.registry import HEADS


@HEADS.register("gene_id")
class GeneIdHead(MLP):
    """Logits over the vocabulary for the next gene."""

    def __init__(self, embed_dim: int, hidden_dim: int, vocab_size: int, dropout: float = 0.0):
        super().__init__(embed_dim, hidden_dim, vocab_size, dropout)


# Per-position count links (the reference's `mu_link_fn`): the rate of gene j depends on position
# j's output and gene j alone, so counts can be drawn one position at a time.
CAUSAL_LINKS = {"exp": torch.exp, "softplus": F.softplus}


@HEADS.register("count")
class CountHead(nn.Module):
    """The count rate at each position, from an MLP on concat(transformer output, the gene's own
    input embedding) plus a per-gene bias.

    ``softmax`` (TranscriptFormer's): a share of the cell's total count, softmax over the cell's
    non-padding positions; the model multiplies it by the total. ``exp`` / ``softplus``: the rate
    itself (``rate``), causal.
    """

    def __init__(self, embed_dim: int, vocab_size: int, dropout: float = 0.0, link: str = "softmax"):
        super().__init__()
        self.link = link
        self.gene_embedding = nn.Embedding(vocab_size, 1)  # per-gene bias
        self.mlp = MLP(2 * embed_dim, 2 * embed_dim // 4, 1, dropout)

    def rate(self, conditioned: Tensor, gene_ids: Tensor) -> Tensor:
        """[B, L] mu under a per-position link."""
        return CAUSAL_LINKS[self.link](self.logits(conditioned, gene_ids))

    def logits(self, conditioned: Tensor, gene_ids: Tensor) -> Tensor:
        """[B, L] each position's share before the softmax (packed rows softmax them per cell)."""
        return (self.gene_embedding(gene_ids) + self.mlp(conditioned)).squeeze(-1)

    def forward(self, conditioned: Tensor, gene_ids: Tensor, masked: Tensor) -> Tensor:
        return masked_softmax(self.logits(conditioned, gene_ids), masked, dim=1)
