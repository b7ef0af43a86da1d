"""TranscriptFormer: an autoregressive transformer over a cell's expressed genes.

Inputs are right-shifted: position j reads ``[START]`` (j = 0) or gene j-1 with its count, and
predicts gene j and its count. Aux (assay) tokens come first, with count 1. Padding may be as
short as the batch allows: outputs of valid positions do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tfx.model.attention import AttentionInputs, soft_cap
from tfx.model.config import ModelConfig
from tfx.model.layers import Encoder, GeneEmbedding
from tfx.registry import ATTENTION, HEADS, LIKELIHOODS


@dataclass
class TokenBatch:
    """Cells as tokens: genes left-aligned, ``[PAD]`` after each cell's last gene."""

    gene_ids: Tensor  # [B, L] int64
    counts: Tensor  # [B, L] float32, 0 at padding
    aux_ids: Tensor | None = None  # [B, A] int64

    def to(self, device) -> TokenBatch:
        aux = None if self.aux_ids is None else self.aux_ids.to(device, non_blocking=True)
        return TokenBatch(self.gene_ids.to(device, non_blocking=True), self.counts.to(device, non_blocking=True), aux)


@dataclass
class ModelOutput:
    hidden: Tensor  # [B, L, E] transformer output at the gene positions
    valid: Tensor  # [B, L] position j holds a real input ([START] or a gene)
    gene_masked: Tensor  # [B, L] position j has no gene to predict (padding)
    mu: Tensor | None = None  # [B, L] expected count of gene j
    gene_logits: Tensor | None = None  # [B, L, V]


@dataclass
class SpecialIds:
    pad: int
    start: int
    end: int


class TranscriptFormer(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        embedding_table: Tensor,
        special: SpecialIds,
        aux_vocabs: dict[str, dict[str, int]] | None = None,
        max_counts: float | None = None,
        attention=None,
    ):
        super().__init__()
        self.cfg = cfg
        self.special = special
        vocab_size = embedding_table.shape[0]
        self.gene_embeddings = GeneEmbedding(embedding_table, cfg.embed_dim, cfg.dropout)
        self.aux_unknown = [v["unknown"] for v in (aux_vocabs or {}).values()]
        if aux_vocabs:
            self.aux_embeddings = nn.ModuleDict(
                {col: nn.Embedding(len(v), cfg.embed_dim) for col, v in aux_vocabs.items()}
            )
        self.transformer_encoder = Encoder(
            cfg.num_layers, dim=cfg.embed_dim, heads=cfg.num_heads, ffn_dim=cfg.model_dim, dropout=cfg.dropout,
            activation=cfg.activation, attn_bias=cfg.attn_bias, fw_bias=cfg.fw_bias,
            backend=attention or ATTENTION.build(cfg.attention),
        )
        self.mu = HEADS.build("count", embed_dim=cfg.embed_dim, vocab_size=vocab_size, dropout=cfg.dropout)
        if cfg.gene_id_loss_weight > 0:
            self.gene_id_head = HEADS.build(
                "gene_id", embed_dim=cfg.embed_dim, hidden_dim=cfg.gene_head_hidden_dim, vocab_size=vocab_size,
                dropout=cfg.dropout,
            )
        self.likelihood = LIKELIHOODS.build(
            cfg.likelihood, vocab_size=vocab_size, eps=cfg.log_counts_eps, max_counts=max_counts,
            softplus_approx=cfg.softplus_approx,
        )
        nn.init.zeros_(self.mu.gene_embedding.weight)

    @property
    def vocab_size(self) -> int:
        return self.gene_embeddings.embedding.num_embeddings

    def set_attention(self, backend) -> None:
        for layer in self.transformer_encoder.encoder_layers:
            layer.self_attn.backend = backend

    def forward(self, batch: TokenBatch, embed: bool = False, heads: bool = True) -> ModelOutput:
        """``embed=True`` is the reference's embedding forward (count bias on the diagonal too),
        which its inference uses for every output, log-likelihoods included."""
        ids, counts = batch.gene_ids, batch.counts
        start = torch.full_like(ids[:, :1], self.special.start)
        # One MLP pass over [START] + genes gives both the inputs and the targets' embeddings.
        emb = self.gene_embeddings(torch.cat([start, ids], dim=1))
        x, target_emb = emb[:, :-1], emb[:, 1:]
        in_ids = torch.cat([start, ids[:, :-1]], dim=1)
        in_counts = torch.cat([torch.ones_like(counts[:, :1]), counts[:, :-1]], dim=1)
        key_valid = in_ids != self.special.pad
        n_aux = 0
        if batch.aux_ids is not None and hasattr(self, "aux_embeddings"):
            aux = batch.aux_ids
            n_aux = aux.shape[1]
            aux_emb = torch.stack([e(aux[:, i]) for i, e in enumerate(self.aux_embeddings.values())], dim=1)
            x = torch.cat([aux_emb, x], dim=1)
            in_counts = torch.cat([torch.ones_like(aux, dtype=in_counts.dtype), in_counts], dim=1)
            aux_valid = torch.stack([aux[:, i] != u for i, u in enumerate(self.aux_unknown)], dim=1)
            key_valid = torch.cat([aux_valid, key_valid], dim=1)

        inp = AttentionInputs(
            log_counts=torch.log1p(in_counts.float() + self.cfg.log_counts_eps),
            key_valid=key_valid,
            embed_mode=embed,
            softcap=self.cfg.softcap,
            block_size=self.cfg.block_len,
        )
        hidden = self.transformer_encoder(x, inp)[:, n_aux:]
        out = ModelOutput(hidden=hidden, valid=key_valid[:, n_aux:], gene_masked=ids == self.special.pad)
        if heads:
            share = self.mu(torch.cat([hidden, target_emb], dim=-1), ids, out.gene_masked)
            out.mu = share * counts.sum(dim=1, keepdim=True)
            if hasattr(self, "gene_id_head"):
                out.gene_logits = self.gene_id_head(hidden)
        return out

    # -- what the outputs mean ---------------------------------------------------------------

    def cell_embeddings(self, out: ModelOutput) -> Tensor:
        """Sum over valid positions divided by the configured seq_len (the reference's pooling)."""
        return (out.hidden * out.valid.unsqueeze(-1)).sum(dim=1) / self.cfg.seq_len

    def targets(self, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        """Gene and count targets. The reference writes [END] and a count of 1 at the last of its
        seq_len positions; a cell that reaches seq_len sees the same here."""
        ids, counts = batch.gene_ids, batch.counts
        last = self.cfg.seq_len - 1
        if ids.shape[1] > last:
            ids, counts = ids.clone(), counts.clone()
            ids[:, last] = self.special.end
            counts[:, last] = 1
        return ids, counts

    def position_nll(self, out: ModelOutput, batch: TokenBatch) -> Tensor:
        _, counts = self.targets(batch)
        return self.likelihood(out.mu.float(), counts.float(), batch.gene_ids).masked_fill(out.gene_masked, 0.0)

    def cell_nll(self, out: ModelOutput, batch: TokenBatch) -> Tensor:
        """Mean count NLL over each cell's genes: the reference's per-cell ``llh``."""
        n = (~out.gene_masked).sum(dim=1)
        return self.position_nll(out, batch).sum(dim=1) / n

    def losses(self, out: ModelOutput, batch: TokenBatch) -> dict[str, Tensor]:
        """Training objective: next-gene cross-entropy (soft-capped logits) and count NLL."""
        n = (~out.gene_masked).sum().clamp(min=1)
        losses = {"count": self.position_nll(out, batch).sum() / n}
        total = losses["count"]
        if out.gene_logits is not None:
            ids, _ = self.targets(batch)
            logits = soft_cap(out.gene_logits.float(), self.cfg.softcap)
            ce = nn.functional.cross_entropy(
                logits.transpose(1, 2), ids.masked_fill(out.gene_masked, -100), reduction="sum"
            )
            losses["gene_id"] = ce / n
            total = total + self.cfg.gene_id_loss_weight * losses["gene_id"]
        losses["loss"] = total
        return losses
