"""Expression-aware causal attention backends.

Every backend computes, per head, softmax over keys of
``softcap(q.k / sqrt(d) + log1p(count_k + eps) * [k < q, or k <= q in embedding mode])``
with keys limited to ``k <= q``, non-padding keys and (when packing) keys of the same cell.
A query with no allowed key outputs zeros, as FlexAttention does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tfx.registry import ATTENTION

HARD_CAP = 1e6  # the reference clamps before the soft-cap to keep tanh's input finite


@dataclass
class AttentionInputs:
    log_counts: Tensor  # [B, L] bias of each key: log1p(count + eps)
    key_valid: Tensor  # [B, L] bool, False for padding (and unknown aux) keys
    embed_mode: bool  # bias the diagonal too (the reference's embedding forward)
    softcap: float
    document_ids: Tensor | None = None  # [B, L] packed rows: attend within one cell only
    block_size: int = 128
    cache: dict = field(default_factory=dict)  # per-forward: masks shared by all layers


def soft_cap(scores: Tensor, cap: float) -> Tensor:
    if cap <= 0:
        return scores
    return cap * torch.tanh(scores.clamp(-HARD_CAP, HARD_CAP) / cap)


def _allowed(inp: AttentionInputs, length: int, device) -> Tensor:
    """[B, 1, L, L] bool: causal, valid key, same document."""
    if "dense_mask" not in inp.cache:
        idx = torch.arange(length, device=device)
        allowed = (idx[None, :] <= idx[:, None])[None] & inp.key_valid[:, None, :]
        if inp.document_ids is not None:
            allowed = allowed & (inp.document_ids[:, :, None] == inp.document_ids[:, None, :])
        inp.cache["dense_mask"] = allowed[:, None]
    return inp.cache["dense_mask"]


@ATTENTION.register("eager")
class EagerAttention:
    """Exact attention math in plain torch; runs on any device. The reference for the others."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs) -> Tensor:
        length = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        idx = torch.arange(length, device=q.device)
        biased = (idx[None, :] <= idx[:, None]) if inp.embed_mode else (idx[None, :] < idx[:, None])
        scores = scores + inp.log_counts[:, None, None, :] * biased
        scores = soft_cap(scores, inp.softcap)
        allowed = _allowed(inp, length, q.device)
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        probs = probs.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
        return probs.to(v.dtype) @ v


@ATTENTION.register("flex")
class FlexAttention:
    """FlexAttention with the count bias and soft-cap as a score_mod and a block mask; compiled."""

    def __init__(self, compile: bool = True):
        from torch.nn.attention.flex_attention import flex_attention

        self._attend = torch.compile(flex_attention, dynamic=False) if compile else flex_attention

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
