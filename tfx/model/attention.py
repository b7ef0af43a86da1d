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

HARD_CAP = 1e6  # the reference clamps before the soft-cap to keep tanh's input finite


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
    if cap <= 0:
        return scores
    return cap * torch.tanh(scores.clamp(-HARD_CAP, HARD_CAP) / cap)


def _allowed(inp: AttentionInputs, length: int, device) -> Tensor:
    """[B, 1, L, L] bool: causal, valid key (one cell per row)."""
    if "dense_mask" not in inp.cache:
        idx = torch.arange(length, device=device)
        allowed = (idx[None, :] <= idx[:, None])[None] & inp.key_valid[:, None, :]
        inp.cache["dense_mask"] = allowed[:, None]
    return inp.cache["dense_mask"]


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
    allowed: list[Tensor]  # [n, 1, Lg, Lg] causal, valid key, inside the cell
    biased: list[Tensor]  # [Lg, Lg]
    log_counts: list[Tensor]  # [n, Lg]

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
        slots, allowed, biased = [], [], []
        for size in torch.unique(padded).tolist():
            chosen = padded == size
            offsets = torch.arange(size, device=device)
            inside = offsets[None, :] < lengths[chosen][:, None]
            slots.append(torch.where(inside, starts[chosen][:, None] + offsets[None, :], spare))
            causal = offsets[None, :] <= offsets[:, None]
            allowed.append((causal[None] & key_valid[slots[-1]][:, None, :])[:, None])
            biased.append(_biased(size, inp.embed_mode, device))
        positions = torch.cat([s.flatten() for s in slots]) if slots else docs.new_zeros(0)
        return cls(positions, [tuple(s.shape) for s in slots], allowed, biased, [log_counts[s] for s in slots])


def _attend(q: Tensor, k: Tensor, v: Tensor, log_counts: Tensor, biased: Tensor, allowed: Tensor,
            softcap: float) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores + log_counts[:, None, None, :] * biased
    scores = soft_cap(scores, softcap)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    probs = probs.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return probs.to(v.dtype) @ v


@ATTENTION.register("eager")
class EagerAttention:
    """Exact attention math in plain torch; runs on any device. The reference for the others."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs) -> Tensor:
        length = q.shape[-2]
        if inp.document_ids is not None:
            return self._packed(q, k, v, inp)
        biased = _biased(length, inp.embed_mode, q.device)
        return _attend(q, k, v, inp.log_counts, biased, _allowed(inp, length, q.device), inp.softcap)

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
            og = _attend(qg, kg, vg, groups.log_counts[i], groups.biased[i], groups.allowed[i], inp.softcap)
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
                score = cap * torch.tanh(score.clamp(-HARD_CAP, HARD_CAP) / cap)
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
