"""Building blocks. Attribute names match the reference's state_dict keys, so official weights
load as they are and tfx's weights load in the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx.model.attention import AttentionInputs, cached_attention

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Linear -> ReLU -> LayerNorm -> Dropout -> Linear (two layers, as every TF MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dropout: float = 0.0, norm: bool = True):
        super().__init__()
        hidden = [nn.Linear(input_dim, hidden_dim), nn.ReLU()]
        hidden += [nn.LayerNorm(hidden_dim)] if norm else []
        self.layers = nn.Sequential(*hidden, nn.Dropout(dropout), nn.Linear(hidden_dim, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GeneEmbedding(nn.Module):
    """Frozen protein-embedding table, projected to the model width by a trained MLP."""

    def __init__(self, table: Tensor, embed_dim: int, dropout: float):
        super().__init__()
        if torch.isnan(table).any():
            raise ValueError("the gene embedding table contains NaN")
        self.embedding = nn.Embedding.from_pretrained(table.float(), freeze=True)
        self.mlp = MLP(table.shape[1], embed_dim, embed_dim, dropout)

    def forward(self, ids: Tensor) -> Tensor:
        return self.mlp(self.embedding(ids))


class KVCache:
    """One layer's keys and values of the positions read so far, for incremental decoding."""

    def __init__(self):
        self.keys = self.values = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys is not None:
            k, v = torch.cat([self.keys, k], dim=-2), torch.cat([self.values, v], dim=-2)
        self.keys, self.values = k, v
        return k, v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool, backend):
        super().__init__()
        self.heads = heads
        self.linears = nn.ModuleList(nn.Linear(dim, dim, bias=bias) for _ in range(4))  # q, k, v, out
        self.backend = backend

    def forward(self, x: Tensor, inp: AttentionInputs, kv: KVCache | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = (lin(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for lin in self.linears[:3])
        if kv is None:
            o = self.backend(q, k, v, inp)
        else:
            o = cached_attention(q, *kv.extend(k, v), inp)
        return self.linears[3](o.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """The reference's block: it normalises the residual stream itself (no final norm)."""

    def __init__(self, dim, heads, ffn_dim, dropout, activation, attn_bias, fw_bias, backend):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim, bias=fw_bias)
        self.linear2 = nn.Linear(ffn_dim, dim, bias=fw_bias)
        self.self_attn = SelfAttention(dim, heads, attn_bias, backend)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: Tensor, inp: AttentionInputs, kv: KVCache | None = None) -> Tensor:
        x = self.norm1(x)
        x = self.self_attn(x, inp, kv) + x
        x = self.norm2(x)
        return self.linear2(self.dropout(self.activation(self.linear1(x)))) + x


class Encoder(nn.Module):
    def __init__(self, num_layers: int, checkpointing: bool = False, **block):
        super().__init__()
        self.encoder_layers = nn.ModuleList(Block(**block) for _ in range(num_layers))
        self.checkpointing = checkpointing

    def forward(self, x: Tensor, inp: AttentionInputs, kv: list[KVCache] | None = None,
                depth: int | None = None) -> Tensor:
        """``kv``: one cache per layer; x holds only the positions after the cached ones. ``depth``:
        run only the first ``depth`` layers (None: all)."""
        for i, layer in enumerate(self.encoder_layers[:depth]):
            if kv is not None:
                x = layer(x, inp, kv[i])
            elif self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, inp, use_reentrant=False)
            else:
                x = layer(x, inp)
        return x


def masked_softmax(logits: Tensor, masked: Tensor, dim: int = 1) -> Tensor:
    """Softmax over unmasked entries; a row with none gives zeros (not NaN, which would poison
    gradients of the whole batch)."""
    empty = masked.all(dim=dim, keepdim=True)
    logits = logits.masked_fill(masked, float("-inf")).masked_fill(empty, 0.0)
    return F.softmax(logits, dim=dim).masked_fill(empty, 0.0)
