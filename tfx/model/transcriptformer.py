"""TranscriptFormer: an autoregressive transformer over a cell's expressed genes.

Inputs are right-shifted: position j reads ``[START]`` (j = 0) or gene j-1 with its count, and
predicts gene j and its count. Aux (assay) tokens come first, with count 1. Padding may be as
short as the batch allows: outputs of valid positions do not depend on it.

Training may pack several cells into a row (``Tokens.cell_ids``): each cell is laid out as it
would be alone, attention stays within the cell, and the count head's softmax and total count are
per cell, so every cell's outputs and losses are those of its unpacked forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx.model.attention import AttentionInputs, soft_cap
from tfx.model.config import ModelConfig
from tfx.model.layers import Encoder, GeneEmbedding, KVCache
from tfx.registry import ATTENTION, HEADS, LIKELIHOODS


class Tokens(Protocol):
    """What the model reads of a batch of cells (``tfx.tokenize.TokenBatch``): genes left-aligned,
    ``[PAD]`` after each cell's last gene; packed rows also carry ``cell_ids`` and ``positions``."""

    gene_ids: Tensor  # [B, L] int64: the gene each position predicts, [PAD] where none
    counts: Tensor  # [B, L] float32, 0 at padding
    aux_ids: Tensor | None  # [B, A] int64; packed: [cells, A]
    cell_ids: Tensor | None  # [B, L] int64 packed: the cell of each position, -1 at row padding
    positions: Tensor | None  # [B, L] int64 packed: aux tokens -A..-1, gene positions 0.., 0 at row padding


@dataclass
class ModelOutput:
    hidden: Tensor  # [B, L, E] transformer output at the gene positions
    valid: Tensor  # [B, L] position j holds a real input ([START] or a gene)
    gene_masked: Tensor  # [B, L] position j has no gene to predict (padding)
    mu: Tensor | None = None  # [B, L] expected count of gene j
    gene_logits: Tensor | None = None  # [B, L, V]
    cell_ids: Tensor | None = None  # [B, L] packed rows: the cell of each position


@dataclass
class DecodeState:
    """Incremental decoding: every layer's key/value cache and each cached key's count bias and
    validity, for the positions a batch of cells has read so far."""

    kv: list[KVCache]
    log_counts: Tensor  # [B, T]
    key_valid: Tensor  # [B, T]


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
        self.mu = HEADS.build(cfg.count_head, embed_dim=cfg.embed_dim, vocab_size=vocab_size, dropout=cfg.dropout,
                              link=cfg.mu_link_fn)
        if cfg.gene_id_loss_weight > 0:
            self.gene_id_head = HEADS.build(
                cfg.gene_head, embed_dim=cfg.embed_dim, hidden_dim=cfg.gene_head_hidden_dim, vocab_size=vocab_size,
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

    @property
    def has_gene_head(self) -> bool:
        return hasattr(self, "gene_id_head")

    @property
    def causal_counts(self) -> bool:
        """Whether gene j's count depends only on the cell up to gene j (a per-position link)."""
        return self.cfg.mu_link_fn != "softmax"

    def set_attention(self, backend) -> None:
        for layer in self.transformer_encoder.encoder_layers:
            layer.self_attn.backend = backend

    def forward(self, batch: Tokens, embed: bool = False, heads: bool = True, layer: int = -1) -> ModelOutput:
        """``embed=True`` is the reference's embedding forward (count bias on the diagonal too),
        which its inference uses for every output, log-likelihoods included. ``layer``: the
        transformer layer whose output is ``hidden`` (-1: the last; the heads are trained on the last)."""
        ids, counts = batch.gene_ids, batch.counts
        if batch.cell_ids is None:
            x, target_emb, in_counts, key_valid, n_aux = self._row_inputs(batch)
        else:
            x, target_emb, in_counts, key_valid = self._packed_inputs(batch)
            n_aux = 0
        inp = AttentionInputs(
            log_counts=torch.log1p(in_counts.float() + self.cfg.log_counts_eps),
            key_valid=key_valid,
            embed_mode=embed,
            softcap=self.cfg.softcap,
            document_ids=batch.cell_ids,
            block_size=self.cfg.block_len,
        )
        hidden = self.transformer_encoder(x, inp, depth=layer % self.cfg.num_layers + 1)[:, n_aux:]
        valid = key_valid[:, n_aux:] if batch.positions is None else key_valid & (batch.positions >= 0)
        out = ModelOutput(hidden=hidden, valid=valid, gene_masked=ids == self.special.pad, cell_ids=batch.cell_ids)
        if heads:
            conditioned = torch.cat([hidden, target_emb], dim=-1)
            if self.causal_counts:
                out.mu = self.mu.rate(conditioned, ids)
            elif batch.cell_ids is None:
                out.mu = self.mu(conditioned, ids, out.gene_masked) * counts.sum(dim=1, keepdim=True)
            else:
                out.mu = self._packed_mu(conditioned, batch, out.gene_masked)
            if hasattr(self, "gene_id_head"):
                out.gene_logits = self.gene_id_head(hidden)
        return out

    def _aux_tokens(self, aux: Tensor) -> tuple[Tensor, Tensor]:
        """Each cell's aux token embeddings [cells, A, E], and which are known [cells, A]."""
        emb = torch.stack([e(aux[:, i]) for i, e in enumerate(self.aux_embeddings.values())], dim=1)
        known = torch.stack([aux[:, i] != u for i, u in enumerate(self.aux_unknown)], dim=1)
        return emb, known

    def _row_inputs(self, batch: Tokens):
        """One cell per row: right-shift the genes, prepend the aux tokens."""
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
            aux_emb, aux_known = self._aux_tokens(batch.aux_ids)
            n_aux = aux_emb.shape[1]
            x = torch.cat([aux_emb, x], dim=1)
            in_counts = torch.cat([torch.ones_like(aux_known, dtype=in_counts.dtype), in_counts], dim=1)
            key_valid = torch.cat([aux_known, key_valid], dim=1)
        return x, target_emb, in_counts, key_valid, n_aux

    def _packed_inputs(self, batch: Tokens):
        """Packed rows: gene position j > 0 of a cell reads gene j-1, which the row holds just before it."""
        ids, counts, pos, cells = batch.gene_ids, batch.counts, batch.positions, batch.cell_ids
        target_emb = self.gene_embeddings(ids)
        start_emb = self.gene_embeddings(ids.new_full((1,), self.special.start))
        x = torch.where((pos == 0).unsqueeze(-1), start_emb, F.pad(target_emb[:, :-1], (0, 0, 1, 0)))
        in_counts = torch.where(pos <= 0, 1.0, F.pad(counts[:, :-1], (1, 0)))  # aux tokens and [START]: 1
        key_valid = (cells >= 0) & (pos >= 0)
        if batch.aux_ids is not None and hasattr(self, "aux_embeddings"):
            # Without aux embeddings the aux positions stay masked keys: no effect, as when unpacked.
            aux_emb, aux_known = self._aux_tokens(batch.aux_ids)
            is_aux = pos < 0
            cell, slot = cells.clamp(min=0), (pos + aux_emb.shape[1]).clamp(0, aux_emb.shape[1] - 1)
            x = torch.where(is_aux.unsqueeze(-1), aux_emb[cell, slot], x)
            key_valid = key_valid | (is_aux & aux_known[cell, slot])
        return x, target_emb, in_counts, key_valid

    def _packed_mu(self, conditioned: Tensor, batch: Tokens, masked: Tensor) -> Tensor:
        """The count head with its softmax and the total count taken per cell, not per row."""
        logit = self.mu.logits(conditioned, batch.gene_ids)
        segment, size = _segments(batch.cell_ids)
        share = _segment_softmax(logit.float(), segment, size, masked)
        return share * _segment_sum(batch.counts.float(), segment, size)

    # -- incremental decoding (generation) ----------------------------------------------------

    def decode_start(self, n_cells: int, aux_ids: Tensor | None = None) -> tuple[Tensor, DecodeState]:
        """Read the aux tokens and [START]; returns the output that predicts the first gene [B, E]."""
        start = torch.full((n_cells, 1), self.special.start, dtype=torch.long, device=self.gene_embeddings.embedding.weight.device)
        x, valid = self.gene_embeddings(start), torch.ones_like(start, dtype=torch.bool)
        if aux_ids is not None and hasattr(self, "aux_embeddings"):
            aux_emb, aux_known = self._aux_tokens(aux_ids)
            x, valid = torch.cat([aux_emb, x], dim=1), torch.cat([aux_known, valid], dim=1)
        empty = x.new_zeros(n_cells, 0)
        state = DecodeState([KVCache() for _ in self.transformer_encoder.encoder_layers], empty,
                            empty.bool())
        return self._decode(state, x, torch.ones_like(valid, dtype=x.dtype), valid)[:, -1], state

    def decode_genes(self, state: DecodeState, gene_ids: Tensor, counts: Tensor) -> Tensor:
        """Read genes [B, n] with their (clipped) counts after the cached positions; [PAD] reads
        nothing (a finished cell). Returns the last output [B, E], which predicts the next gene."""
        valid = gene_ids != self.special.pad
        return self._decode(state, self.gene_embeddings(gene_ids), counts, valid)[:, -1]

    def _decode(self, state: DecodeState, x: Tensor, counts: Tensor, valid: Tensor) -> Tensor:
        state.log_counts = torch.cat([state.log_counts, torch.log1p(counts.float() + self.cfg.log_counts_eps)], dim=1)
        state.key_valid = torch.cat([state.key_valid, valid], dim=1)
        inp = AttentionInputs(log_counts=state.log_counts, key_valid=state.key_valid, embed_mode=False,
                              softcap=self.cfg.softcap)
        return self.transformer_encoder(x, inp, state.kv)

    def next_gene_logits(self, hidden: Tensor) -> Tensor:
        """[B, V] soft-capped logits of the next gene, as the loss reads them."""
        return soft_cap(self.gene_id_head(hidden).float(), self.cfg.softcap)

    def count_rate(self, hidden: Tensor, gene_ids: Tensor) -> Tensor:
        """[B] mu of each chosen gene's count at the position that chose it. Exact for a causal
        head; for the softmax head the logit is read as a log-rate (its softmax over the whole
        cell and the cell's total count are not known until the cell is complete)."""
        conditioned = torch.cat([hidden, self.gene_embeddings(gene_ids)], dim=-1)
        if self.causal_counts:
            return self.mu.rate(conditioned, gene_ids)
        return self.mu.logits(conditioned, gene_ids).exp()

    # -- what the outputs mean ---------------------------------------------------------------

    def protein_output(self, batch: Tokens) -> ModelOutput:
        """The ESM2-CE baseline (the reference's ESM2CE): each gene's frozen protein embedding, no
        MLP and no transformer. Its ``cell_embeddings`` are the reference's: the sum over the
        cell's genes divided by the configured seq_len."""
        masked = batch.gene_ids == self.special.pad
        valid = ~masked if batch.positions is None else ~masked & (batch.positions >= 0)
        return ModelOutput(hidden=self.gene_embeddings.embedding(batch.gene_ids), valid=valid, gene_masked=masked,
                           cell_ids=batch.cell_ids)

    def cell_embeddings(self, out: ModelOutput) -> Tensor:
        """Sum over valid positions divided by the configured seq_len (the reference's pooling)."""
        return _per_cell(out.hidden * out.valid.unsqueeze(-1), out.cell_ids) / self.cfg.seq_len

    def targets(self, batch: Tokens) -> tuple[Tensor, Tensor]:
        """Gene and count targets. The reference writes [END] and a count of 1 at the last of its
        seq_len positions; a cell that reaches seq_len sees the same here."""
        ids, counts = batch.gene_ids, batch.counts
        last = self.cfg.seq_len - 1
        if batch.positions is not None:
            at_last = batch.positions == last
            return ids.masked_fill(at_last, self.special.end), counts.masked_fill(at_last, 1.0)
        if ids.shape[1] > last:
            ids, counts = ids.clone(), counts.clone()
            ids[:, last] = self.special.end
            counts[:, last] = 1
        return ids, counts

    def end_positions(self, batch: Tokens) -> Tensor:
        """[B, L] the position after each cell's last gene: it predicts [END]. (A cell that fills
        seq_len has none; its last target becomes [END] instead, see ``targets``.)"""
        pad = batch.gene_ids == self.special.pad
        if batch.cell_ids is not None:
            return pad & (batch.cell_ids >= 0) & (batch.positions >= 0)
        return pad & (pad.cumsum(dim=1) == 1)

    def position_nll(self, out: ModelOutput, batch: Tokens) -> Tensor:
        _, counts = self.targets(batch)
        return self.likelihood(out.mu.float(), counts.float(), batch.gene_ids).masked_fill(out.gene_masked, 0.0)

    def cell_nll(self, out: ModelOutput, batch: Tokens) -> Tensor:
        """Mean count NLL over each cell's genes: the reference's per-cell ``llh``."""
        n = _per_cell((~out.gene_masked).long(), out.cell_ids)
        return _per_cell(self.position_nll(out, batch), out.cell_ids) / n

    def gene_log_probs(self, out: ModelOutput, allowed: Tensor | None = None) -> Tensor:
        """[B, L, V] log p(next gene) from the soft-capped logits; ``allowed`` [B, L, V] bool
        renormalises over a subset (a sampler's support)."""
        logits = soft_cap(out.gene_logits.float(), self.cfg.softcap)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def position_gene_nll(self, out: ModelOutput, batch: Tokens, end: bool = False,
                          allowed: Tensor | None = None) -> Tensor:
        """[B, L] -log p of each position's gene target, 0 where there is none. ``end``: the
        position after a cell's last gene predicts [END] (the training objective); without it
        only gene positions count (the reference's ``gene_llh``)."""
        ids, _ = self.targets(batch)
        scored = ~out.gene_masked
        if end:
            ends = self.end_positions(batch)
            ids, scored = ids.masked_fill(ends, self.special.end), scored | ends
        logp = self.gene_log_probs(out, allowed)
        nll = -logp.gather(-1, ids.masked_fill(~scored, 0).unsqueeze(-1)).squeeze(-1)
        return nll.masked_fill(~scored, 0.0)

    def sequence_nll(self, out: ModelOutput, batch: Tokens, allowed: Tensor | None = None) -> Tensor:
        """[cells] each cell's total negative log-probability under the training factorisation:
        every gene choice, [END] included, plus every gene's count. Needs the training forward
        (``embed=False``); ``allowed`` as in ``gene_log_probs``."""
        genes = self.position_gene_nll(out, batch, end=True, allowed=allowed)
        ids, _ = self.targets(batch)
        counts = self.position_nll(out, batch).masked_fill(ids == self.special.end, 0.0)  # [END] has no count
        return _per_cell(genes + counts, out.cell_ids)

    def losses(self, out: ModelOutput, batch: Tokens) -> dict[str, Tensor]:
        """Training objective: next-gene cross-entropy (soft-capped logits), [END] after each
        cell's last gene included, and count NLL."""
        n = (~out.gene_masked).sum().clamp(min=1)
        losses = {"count": self.position_nll(out, batch).sum() / n}
        total = losses["count"]
        if out.gene_logits is not None:
            predicted = (~out.gene_masked).sum() + self.end_positions(batch).sum()
            losses["gene_id"] = self.position_gene_nll(out, batch, end=True).sum() / predicted.clamp(min=1)
            total = total + self.cfg.gene_id_loss_weight * losses["gene_id"]
        losses["loss"] = total
        return losses


# -- per-cell reductions over packed rows ------------------------------------------------------

def _per_cell(values: Tensor, cell_ids: Tensor | None) -> Tensor:
    """[B, L, ...] summed over each cell's positions: [cells, ...] (a row is a cell when unpacked)."""
    if cell_ids is None:
        return values.sum(dim=1)
    ids = cell_ids.flatten()
    keep = ids >= 0
    sums = values.new_zeros((int(cell_ids.max()) + 1, *values.shape[2:]))
    return sums.index_add(0, ids[keep], values.flatten(0, 1)[keep])


def _segments(cell_ids: Tensor) -> tuple[Tensor, int]:
    """Flat segment index of each position (row padding shares a spare one) and the number of
    segments, bounded by the positions so that no device sync is needed."""
    size = cell_ids.numel() + 1
    return torch.where(cell_ids < 0, size - 1, cell_ids).flatten(), size


def _segment_sum(values: Tensor, segment: Tensor, size: int) -> Tensor:
    """Each position gets the sum of its segment's values."""
    flat = values.flatten()
    return flat.new_zeros(size).index_add(0, segment, flat)[segment].view_as(values)


def _segment_softmax(logits: Tensor, segment: Tensor, size: int, masked: Tensor) -> Tensor:
    """Softmax over each segment's unmasked positions; 0 at masked ones (and for a segment with none)."""
    flat = logits.flatten().masked_fill(masked.flatten(), float("-inf"))
    # The shift only keeps exp in range; softmax does not depend on it, so it needs no gradient.
    peak = flat.new_full((size,), float("-inf")).scatter_reduce(0, segment, flat.detach(), "amax")
    peak = peak.clamp(min=torch.finfo(flat.dtype).min)  # an all-masked segment: exp(-inf) = 0, not NaN
    e = torch.exp(flat - peak[segment])
    total = e.new_zeros(size).index_add(0, segment, e)[segment]
    return (e / torch.where(total > 0, total, 1.0)).view_as(logits)
