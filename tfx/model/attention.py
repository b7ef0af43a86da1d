"""Expression-aware causal attention backends.

Every backend computes, per head, softmax over keys of
``softcap(q.k / sqrt(d) + log1p(count_k + eps) * [k < q, or k <= q in embedding mode])``
with keys limited to ``k <= q``, non-padding keys and (when packing) keys of the same cell.
A query with no allowed key outputs zeros, as FlexAttention does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tfx.registry import ATTENTION


@dataclass
class AttentionInputs:
    log_counts: Tensor  # [B, L] bias of each key: log1p(count + eps)
    key_valid: Tensor  # [B, L] bool, False for padding (and unknown aux) keys
    embed_mode: bool  # bias the diagonal too (the reference's embedding forward)
    softcap: float
    document_ids: Tensor | None = None  # [B, L] packed rows (cells contiguous): attend within one cell only
    block_size: int = 128
    cache: dict = field(default_factory=dict)  # per-forward: masks shared by all layers


def soft_cap(scores: Tensor, cap: float) -> Tensor:
    """cap * tanh(scores / cap). The reference clamps the scores to +-1e6 first; tanh reaches +-1
    exactly long before that (and at +-inf), so the clamp changes no value and no gradient."""
    if cap <= 0:
        return scores
    return cap * torch.tanh(scores / cap)


@dataclass
class _ScoreTerms:
    """What every layer and head of one forward adds to its scores, computed once: the count bias
    (already divided by the soft-cap) and the mask as 0 / -inf. Queries with no allowed key get a
    mask of 0 (a finite softmax) and their output is zeroed afterwards."""

    bias: Tensor  # [n, 1, L, L]
    mask: Tensor  # [n, 1, L, L]; without a soft-cap the bias is folded in, so one add does both
    empty: Tensor  # [n, 1, L, 1] bool

    @classmethod
    def of(cls, log_counts: Tensor, biased: Tensor, allowed: Tensor, softcap: float) -> _ScoreTerms:
        bias = log_counts[:, None, None, :] * biased
        if softcap > 0:
            bias = bias / softcap
        empty = ~allowed.any(-1, keepdim=True)
        mask = torch.zeros(allowed.shape, dtype=bias.dtype, device=bias.device)
        mask.masked_fill_(~allowed & ~empty, float("-inf"))
        return cls(bias, mask if softcap > 0 else mask + bias, empty)


def _causal_terms(inp: AttentionInputs, length: int, device) -> _ScoreTerms:
    """One cell per row: causal, valid keys."""
    if "terms" not in inp.cache:
        idx = torch.arange(length, device=device)
        allowed = ((idx[None, :] <= idx[:, None])[None] & inp.key_valid[:, None, :])[:, None]
        inp.cache["terms"] = _ScoreTerms.of(inp.log_counts, _biased(length, inp.embed_mode, device), allowed,
                                            inp.softcap)
    return inp.cache["terms"]


def _biased(length: int, embed_mode: bool, device) -> Tensor:
    """[L, L] bool: which (query, key) pairs get the key's count bias."""
    idx = torch.arange(length, device=device)
    return (idx[None, :] <= idx[:, None]) if embed_mode else (idx[None, :] < idx[:, None])


def _group_length(lengths: Tensor) -> Tensor:
    """Packed rows, eager math: the length each cell is padded to (cells of one length form a group).
    A multiple of 16: coarser steps mean fewer, larger kernel calls but more padded attention, and
    on CPU neither wins clearly."""
    return (lengths + 15) // 16 * 16


@dataclass
class _CellGroups:
    """Packed rows regrouped for the eager math: the cells (contiguous runs of one document id)
    sorted into groups of similar length, each group padded to its length, so that attention costs
    what it costs unpacked instead of O(row^2)."""

    positions: Tensor  # [sum of n x Lg] each group's slots in the flattened rows; padding -> a spare slot
    shapes: list[tuple[int, int]]  # (cells, Lg) of each group
    terms: list[_ScoreTerms]

    @classmethod
    def of(cls, inp: AttentionInputs, length: int, device) -> _CellGroups:
        docs = inp.document_ids.flatten()
        spare = docs.numel()
        new_cell = torch.ones_like(docs, dtype=torch.bool)
        new_cell[1:] = docs[1:] != docs[:-1]
        new_cell[::length] = True  # rows start new cells
        starts = torch.nonzero(new_cell).flatten()
        lengths = torch.diff(starts, append=starts.new_tensor([spare]))
        is_cell = docs[starts] >= 0  # runs of row padding are no cell: their outputs stay 0
        starts, lengths = starts[is_cell], lengths[is_cell]
        padded = _group_length(lengths)
        key_valid = torch.cat([inp.key_valid.flatten(), inp.key_valid.new_zeros(1)])
        log_counts = torch.cat([inp.log_counts.flatten(), inp.log_counts.new_zeros(1)])
        slots, terms = [], []
        for size in torch.unique(padded).tolist():
            chosen = padded == size
            offsets = torch.arange(size, device=device)
            inside = offsets[None, :] < lengths[chosen][:, None]
            slots.append(torch.where(inside, starts[chosen][:, None] + offsets[None, :], spare))
            causal = offsets[None, :] <= offsets[:, None]
            allowed = (causal[None] & key_valid[slots[-1]][:, None, :])[:, None]
            terms.append(_ScoreTerms.of(log_counts[slots[-1]], _biased(size, inp.embed_mode, device), allowed,
                                        inp.softcap))
        positions = torch.cat([s.flatten() for s in slots]) if slots else docs.new_zeros(0)
        return cls(positions, [tuple(s.shape) for s in slots], terms)


def _attend(q: Tensor, k: Tensor, v: Tensor, terms: _ScoreTerms, softcap: float, rows: int = 32) -> Tensor:
    """Causal attention in blocks of ``rows`` queries, each against only the keys up to its last
    query: about half the score work of one L x L pass, and the same result (the keys skipped
    are masked for those queries)."""
    length = q.shape[-2]
    if length <= rows:
        return _attend_rows(q, k, v, terms, softcap, 0, length)
    k, v = k.contiguous(), v.contiguous()
    return torch.cat([_attend_rows(q, k, v, terms, softcap, start, min(start + rows, length))
                      for start in range(0, length, rows)], dim=-2)


def _attend_rows(q: Tensor, k: Tensor, v: Tensor, terms: _ScoreTerms, softcap: float, start: int, stop: int):
    """Queries start..stop: softmax(mask + cap * tanh(q.k * scale / cap + bias / cap)) @ v in few
    passes over the scores; the scale rides on q, and the in-place steps touch no tensor autograd keeps."""
    cap = softcap if softcap > 0 else 1.0
    q, k, v = q[..., start:stop, :], k[..., :stop, :], v[..., :stop, :]
    scores = (q * (q.shape[-1] ** -0.5 / cap)) @ k.transpose(-2, -1)
    scores = scores.float()  # under autocast the score math stays in fp32, as FlexAttention's does
    mask = terms.mask[..., start:stop, :stop]
    if softcap > 0:
        scores = torch.add(mask, scores.add_(terms.bias[..., start:stop, :stop]).tanh_(), alpha=softcap)
    else:
        scores = scores.add_(mask)
    out = torch.softmax(scores, dim=-1).to(v.dtype) @ v
    return out.masked_fill_(terms.empty[..., start:stop, :], 0.0)


def cached_attention(q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs) -> Tensor:
    """Incremental decoding: the queries are the last n of the k keys (the earlier ones come from a
    key/value cache). The training forward's math: causal, count bias on keys strictly before the
    query, soft-cap, invalid keys masked."""
    n, total = q.shape[-2], k.shape[-2]
    query_pos = torch.arange(total - n, total, device=q.device)[:, None]
    key_pos = torch.arange(total, device=q.device)[None, :]
    allowed = (key_pos <= query_pos)[None] & inp.key_valid[:, None, :]  # [B, n, total]
    bias = inp.log_counts[:, None, :] * (key_pos < query_pos)[None]
    scores = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).float()  # fp32 under autocast, as the others
    scores = soft_cap(scores + bias[:, None], inp.softcap)
    empty = ~allowed.any(-1, keepdim=True)  # no key: output 0, as the other backends
    scores = scores.masked_fill(~(allowed | empty)[:, None], float("-inf"))
    return (torch.softmax(scores, dim=-1).to(v.dtype) @ v).masked_fill(empty[:, None], 0.0)


@ATTENTION.register("eager")
class EagerAttention:
    """Exact attention math in plain torch; runs on any device. The reference for the others."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs) -> Tensor:
        if inp.document_ids is not None:
            return self._packed(q, k, v, inp)
        return _attend(q, k, v, _causal_terms(inp, q.shape[-2], q.device), inp.softcap)

    def _packed(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs) -> Tensor:
        b, h, length, d = q.shape
        if "cell_groups" not in inp.cache:
            inp.cache["cell_groups"] = _CellGroups.of(inp, length, q.device)
        groups = inp.cache["cell_groups"]
        # One gather in and one scatter out for all groups (per-group indexing would make autograd
        # accumulate a full-size gradient per group).
        flat = [F.pad(t.transpose(1, 2).reshape(b * length, h, d), (0, 0, 0, 0, 0, 1)) for t in (q, k, v)]
        gathered = [t[groups.positions].split([n * size for n, size in groups.shapes]) for t in flat]
        outs = []
        for i, (n, size) in enumerate(groups.shapes):
            qg, kg, vg = (g[i].view(n, size, h, d).transpose(1, 2) for g in gathered)
            og = _attend(qg, kg, vg, groups.terms[i], inp.softcap)
            outs.append(og.transpose(1, 2).reshape(n * size, h, d))
        out = flat[0].new_zeros(b * length + 1, h, d)
        if outs:
            out = out.index_put((groups.positions,), torch.cat(outs))  # padding slots all land on the spare
        return out[:-1].view(b, length, h, d).transpose(1, 2)


@ATTENTION.register("flex")
class FlexAttention:
    """FlexAttention with the count bias and soft-cap as a score_mod and a block mask; compiled."""

    def __init__(self, compile: bool = True, dynamic: bool = False):
        """``dynamic``: one kernel for every batch shape (padded batches vary) instead of one per shape."""
        from torch.nn.attention.flex_attention import flex_attention

        self._attend = torch.compile(flex_attention, dynamic=dynamic) if compile else flex_attention

    def _block_mask(self, inp: AttentionInputs, batch: int, length: int, device):
        from torch.nn.attention.flex_attention import create_block_mask

        if "block_mask" not in inp.cache:
            key_valid, docs = inp.key_valid, inp.document_ids

            def mask_mod(b, h, q_idx, kv_idx):
                keep = (q_idx >= kv_idx) & key_valid[b, kv_idx]
                if docs is not None:
                    keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
                return keep

            inp.cache["block_mask"] = create_block_mask(
                mask_mod, batch, None, length, length, device=device, BLOCK_SIZE=inp.block_size
            )
        return inp.cache["block_mask"]

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs) -> Tensor:
        log_counts, cap, embed = inp.log_counts, inp.softcap, inp.embed_mode

        def score_mod(score, b, h, q_idx, kv_idx):
            biased = (q_idx >= kv_idx) if embed else (q_idx > kv_idx)
            score = score + log_counts[b, kv_idx] * biased
            if cap > 0:
                score = cap * torch.tanh(score / cap)
            return score

        block_mask = self._block_mask(inp, q.shape[0], q.shape[-2], q.device)
        return self._attend(q, k, v, score_mod=score_mod, block_mask=block_mask)


@ATTENTION.register("auto")
class AutoAttention:
    """FlexAttention on CUDA, the exact eager path elsewhere."""

    def __init__(self):
        self._eager = EagerAttention()
        self._flex = None

    def __call__(self, q, k, v, inp):
        if q.is_cuda:
            self._flex = self._flex or FlexAttention()
            return self._flex(q, k, v, inp)
        return self._eager(q, k, v, inp)
