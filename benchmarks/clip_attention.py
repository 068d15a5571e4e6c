"""The OpenCLIP image tower's self-attention through ``F.scaled_dot_product_attention``, compile-friendly.

Why: open_clip's ``ResidualAttentionBlock`` calls ``nn.MultiheadAttention``. Eager, in inference, that takes
PyTorch's fused fast path; under ``torch.compile`` it is traced through ``F.multi_head_attention_forward`` and
the compiled ViT-H-14 tower ran slower than eager on an H100 (benchmarks/RESULTS.md).
:class:`SdpaSelfAttention` computes the same self-attention from the same parameters as one packed input
projection, one SDPA call (flash / cuDNN kernels) and the output projection, which Inductor compiles as is.

Measured on an H100 (benchmarks/RESULTS.md, encode run 4): no faster eager and still slower compiled,
so :class:`model.encoders.Encoders` keeps open_clip's own attention and runs
the tower eager; this module stays for ``benchmarks/encode.py --variants deferred``, which reproduces that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SdpaSelfAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch_first, packed in-projection) for self-attention without a mask.

    Shares the module's parameters under the same names, so ``state_dict`` keys do not change;
    cross-attention, masks, separate q/k/v projections and attention weights are refused (the image tower
    uses none of them).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ValueError(
                "SdpaSelfAttention needs a batch_first MultiheadAttention with a packed projection"
            )
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SdpaSelfAttention does not handle bias_k/bias_v or add_zero_attn")
        self.num_heads = mha.num_heads
        self.embed_dim = mha.embed_dim
        self.dropout = mha.dropout
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or attn_mask is not None or need_weights:
            raise ValueError("SdpaSelfAttention: self-attention only, without masks or attention weights")
        if kwargs:
            raise ValueError(f"SdpaSelfAttention: unsupported arguments {sorted(kwargs)}")
        b, n, c = query.shape
        h = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, h, c // h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, h, n, d)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c)), None


def use_sdpa_attention(tower: nn.Module) -> int:
    """Swap every ``nn.MultiheadAttention`` named ``attn`` in open_clip residual blocks under ``tower`` for
    :class:`SdpaSelfAttention` (same parameters); returns how many were swapped."""
    count = 0
    for module in tower.modules():
        attn = getattr(module, "attn", None)
        if (
            isinstance(attn, nn.MultiheadAttention)
            and hasattr(module, "ln_1")
            and not hasattr(module, "ln_1_kv")
        ):
            module.attn = SdpaSelfAttention(attn)
            count += 1
    return count
