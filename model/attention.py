"""Attention building blocks (parameter names follow the official sgm layout).

All attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels on the GPU). Token tensors are (N, L, C): N independent sequences of L tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# CUDA kernels launch one grid row per (sequence, head) group; very large batches of short sequences (the
# frame attention at 72x72 has B*V*H*W sequences) are split so that no launch exceeds the grid limit.
_MAX_SDPA_BATCH = 32768


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over (N, heads, L, d) tensors, chunked along N when N is huge."""
    n = q.shape[0]
    if n <= _MAX_SDPA_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                q[i : i + _MAX_SDPA_BATCH], k[i : i + _MAX_SDPA_BATCH], v[i : i + _MAX_SDPA_BATCH]
            )
            for i in range(0, n, _MAX_SDPA_BATCH)
        ],
        dim=0,
    )


class CrossAttention(nn.Module):
    """Multi-head (self- or cross-) attention: ``to_q/to_k/to_v`` without bias, ``to_out.0`` with bias."""

    def __init__(
        self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, L, query_dim); context: (N, M, context_dim) or None (self-attention) -> (N, L, dim)."""
        context = x if context is None else context
        n, length, _ = x.shape
        h = self.heads
        q = self.to_q(x).view(n, length, h, -1).transpose(1, 2)
        k = self.to_k(context).view(n, context.shape[1], h, -1).transpose(1, 2)
        v = self.to_v(context).view(n, context.shape[1], h, -1).transpose(1, 2)
        out = sdpa(q, k, v).transpose(1, 2).reshape(n, length, -1)
        return self.to_out(out)

    def attend_single_key(
        self, context: torch.Tensor, length: int, unused: tuple[torch.Tensor, ...] = ()
    ) -> torch.Tensor:
        """``forward(q_input, context)`` for a one-token context (N, 1, context_dim), as an (N, length, dim)
        broadcast view, without the query input.

        The softmax over a single key is exactly 1, so every query gets that key's value and neither q nor k
        can change the output: the context token is projected once and broadcast, instead of running
        ``to_q`` over all ``length`` queries and SDPA (every cross-attention of the network has one key: the
        CLIP token, or the reference latent at the pixel). ``to_q``, ``to_k`` and ``unused`` (the parameters
        of the norm that fed the queries) stay in the graph with exactly zero gradient, as through SDPA, where
        their gradients are zero up to rounding (DDP also expects every parameter to receive a gradient).
        """
        if context.shape[1] != 1:
            raise ValueError(f"attend_single_key needs a one-token context, got shape {tuple(context.shape)}")
        out = self.to_out(self.to_v(context))
        zero = sum(p.sum() for p in (self.to_q.weight, self.to_k.weight, *unused)) * 0.0
        return (out + zero.to(out.dtype)).expand(context.shape[0], length, out.shape[-1])


def cross_attention_residual(
    attn: CrossAttention, norm: nn.LayerNorm, x: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """``attn(norm(x), context) + x``, through ``attend_single_key`` when the context is one token (then
    ``norm(x)`` is never computed: it could only reach the output through the queries). Not while the output
    dropout is active: SDPA's path draws a dropout mask per query, the broadcast one per sequence."""
    if context.shape[1] == 1 and not (attn.training and attn.to_out[1].p > 0):
        return x + attn.attend_single_key(context, x.shape[1], (norm.weight, norm.bias))
    return attn(norm(x), context) + x


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x inner width: ``net.0.proj`` (dim -> 8 dim), ``net.2`` (4 dim -> dim_out)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Per-image block: self-attention, cross-attention to the context, feed-forward (pre-LN, residual)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (N, L, dim); context: (N, M, context_dim)."""
        x = self.attn1(self.norm1(x)) + x
        x = cross_attention_residual(self.attn2, self.norm2, x, context)
        return self.ff(self.norm3(x)) + x


class TimeMixBlock(nn.Module):
    """The official ``BasicTransformerTimeMixBlock`` with ``ff_in``: used both as the 3D ("camera") block
    and as the frame ("motion") block. It attends along the sequences it is given; the caller arranges
    the tokens.

    Order: ``x = ff_in(norm_in(x)) + x``, ``x = attn1(norm1(x)) + x``, ``x = attn2(norm2(x), ctx) + x``,
    ``x = ff(norm3(x)) + x``.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=dim, dropout=dropout)
        self.attn1 = CrossAttention(dim, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dim_out=dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (N, L, dim) sequences to attend along; context: (N, M, context_dim)."""
        x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x)) + x
        x = cross_attention_residual(self.attn2, self.norm2, x, context)
        return self.ff(self.norm3(x)) + x

    def zero_residual_outputs_(self) -> None:
        """Make the block the identity map (all four residual branches output zero)."""
        for lin in (self.ff_in.net[2], self.attn1.to_out[0], self.attn2.to_out[0], self.ff.net[2]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
