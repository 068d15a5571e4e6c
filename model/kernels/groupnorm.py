"""GroupNorm for channels_last activations, with the statistics from a Triton kernel.

Why: in the VAE encoder (channels_last, so that cuDNN's convolutions run near the matmul ceiling) the
GroupNorm statistics were the largest memory-bound cost. PyTorch's native GroupNorm has no channels_last CUDA
path (it copies to NCHW and back), and the reductions Inductor generates for it read the (N, H*W, C) layout
with group-strided accesses at a fraction of the memory bandwidth (benchmarks/RESULTS.md).

How: ``group_norm_stats`` reads each image's (H*W, C) rows in contiguous tiles of whole rows (coalesced),
reduces every tile to a per-group mean and centred sum of squares in fp32, merges the tiles of a program with
Chan's formula, and leaves one partial result per (image, row chunk); the few partials are merged on the
host side the same way. The normalisation itself, ``x * scale + shift`` with per-(image, channel) scale and
shift, is left to PyTorch, so that under ``torch.compile`` Inductor fuses it with the SiLU that follows.
The statistics op is a ``torch.library`` custom op (opaque to the compiler, no autograd: inference only).

:class:`ChannelsLastGroupNorm` replaces an ``nn.GroupNorm`` (sharing its parameters) and falls back to
``F.group_norm`` whenever the kernel does not apply: no Triton, a CPU tensor (unless ``TRITON_INTERPRET=1``,
which the tests use), not channels_last, a channel count that is not a power of two, or autograd recording.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA and CPU wheels of torch alike
    triton = None
    tl = None

_TILE_ELEMENTS = 8192
"""Elements per loaded tile (rows x channels): 16 KB of bf16, enough in flight per program."""
_MIN_ROWS_PER_PROGRAM = 1024
_PROGRAMS_PER_SM = 4


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


if triton is not None:

    @triton.jit
    def _partial_stats_kernel(
        x_ptr,
        b_ptr,
        mean_ptr,
        m2_ptr,
        rows,
        rows_per_prog,
        chunks,
        C: tl.constexpr,
        G: tl.constexpr,
        BLOCK_R: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):
        """One program = one (image, chunk of rows); writes the chunk's per-group mean and centred sum of
        squares (fp32) of x (+ the per-channel bias b when HAS_BIAS). x is the image batch as (N, rows, C)
        contiguous (channels_last)."""
        CPG: tl.constexpr = C // G
        pid = tl.program_id(0)
        n = pid // chunks
        r0 = (pid % chunks) * rows_per_prog
        r_end = tl.minimum(r0 + rows_per_prog, rows)
        offs_r = tl.arange(0, BLOCK_R)
        offs_c = tl.arange(0, C)
        base = x_ptr + n.to(tl.int64) * rows * C
        mean = tl.zeros([G], dtype=tl.float32)
        m2 = tl.zeros([G], dtype=tl.float32)
        if HAS_BIAS:
            b = tl.load(b_ptr + offs_c).to(tl.float32)
        for start in range(r0, r_end, BLOCK_R):
            r = start + offs_r
            valid = r < r_end
            ptrs = base + r.to(tl.int64)[:, None] * C + offs_c[None, :]
            x = tl.load(ptrs, mask=valid[:, None], other=0.0).to(tl.float32)
            if HAS_BIAS:
                x = tl.where(valid[:, None], x + b[None, :], 0.0)
            n_tile = tl.sum(valid.to(tl.float32), axis=0) * CPG
            xg = tl.reshape(x, [BLOCK_R, G, CPG])
            tile_mean = tl.sum(tl.sum(xg, axis=2), axis=0) / n_tile
            d = xg - tile_mean[None, :, None]
            d = tl.where(tl.reshape(valid, [BLOCK_R, 1, 1]), d, 0.0)
            tile_m2 = tl.sum(tl.sum(d * d, axis=2), axis=0)
            seen = (start - r0).to(tl.float32) * CPG  # every earlier tile was full
            total = seen + n_tile
            delta = tile_mean - mean
            mean = mean + delta * (n_tile / total)
            m2 = m2 + tile_m2 + delta * delta * (seen * n_tile / total)
        out = pid * G + tl.arange(0, G)
        tl.store(mean_ptr + out, mean)
        tl.store(m2_ptr + out, m2)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def kernel_applies(x: torch.Tensor, groups: int) -> bool:
    """Whether ``group_norm_stats`` can take ``x`` (else callers use ``F.group_norm``)."""
    if triton is None or x.ndim != 4 or not (x.is_cuda or _interpreting()):
        return False
    c = x.shape[1]
    if c % groups or not (_pow2(c) and _pow2(groups)) or x.shape[0] * x.shape[2] * x.shape[3] == 0:
        return False
    return x.is_contiguous(memory_format=torch.channels_last)


def _programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@torch.library.custom_op("sv4d2::group_norm_stats", mutates_args=())
def group_norm_stats(
    x: torch.Tensor, groups: int, eps: float, pre_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(image, group) mean and 1/sqrt(var + eps), fp32 (N, groups), of a channels_last (N, C, H, W)
    tensor plus an optional per-channel ``pre_bias`` (C,) added on load (biased variance, as GroupNorm).
    Requires ``kernel_applies(x, groups)``."""
    if not kernel_applies(x, groups):
        raise ValueError(
            f"group_norm_stats needs a channels_last CUDA tensor with power-of-two channels and groups; got "
            f"shape {tuple(x.shape)}, groups {groups}, device {x.device}"
        )
    if pre_bias is not None and (pre_bias.shape != (x.shape[1],) or pre_bias.device != x.device):
        raise ValueError(
            f"pre_bias must have shape ({x.shape[1]},) on {x.device}, got {tuple(pre_bias.shape)} on "
            f"{pre_bias.device}"
        )
    n, c, h, w = x.shape
    rows = h * w
    chunks = max(1, min(math.ceil(rows / _MIN_ROWS_PER_PROGRAM), math.ceil(_programs_target(x.device) / n)))
    block_r = max(1, min(_TILE_ELEMENTS // c, triton.next_power_of_2(rows)))
    rows_per_prog = math.ceil(math.ceil(rows / chunks) / block_r) * block_r
    chunks = math.ceil(rows / rows_per_prog)
    part_mean = torch.empty(n * chunks * groups, device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    _partial_stats_kernel[(n * chunks,)](
        x,
        x if pre_bias is None else pre_bias.contiguous(),
        part_mean,
        part_m2,
        rows,
        rows_per_prog,
        chunks,
        C=c,
        G=groups,
        BLOCK_R=block_r,
        HAS_BIAS=pre_bias is not None,
    )
    # Merge the chunks (Chan's parallel formula): few numbers, plain torch.
    part_mean = part_mean.view(n, chunks, groups)
    part_m2 = part_m2.view(n, chunks, groups)
    starts = torch.arange(chunks, device=x.device, dtype=torch.float32) * rows_per_prog
    counts = ((rows - starts).clamp(0, rows_per_prog) * (c // groups))[None, :, None]
    total = float(rows * (c // groups))
    mean = (part_mean * counts).sum(1) / total
    m2 = part_m2.sum(1) + (counts * (part_mean - mean[:, None]) ** 2).sum(1)
    return mean, torch.rsqrt(m2 / total + eps)


@group_norm_stats.register_fake
def _(
    x: torch.Tensor, groups: int, eps: float, pre_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0], groups)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


def group_norm(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    pre_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.group_norm(x + pre_bias)`` with the Triton statistics where they apply (same values within float
    rounding). ``pre_bias`` (C,) is a per-channel bias not yet added to ``x`` (a convolution's, deferred so
    that ``x + pre_bias`` is never written out: see model.kernels.vae_encoder)."""
    grad = torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad))
    if grad or not kernel_applies(x, groups):
        if pre_bias is not None:
            x = x + pre_bias.to(x.dtype)[None, :, None, None]
        return F.group_norm(x, groups, weight, bias, eps)
    mean, rstd = torch.ops.sv4d2.group_norm_stats(x, groups, eps, pre_bias)
    cpg = x.shape[1] // groups
    scale = rstd.repeat_interleave(cpg, dim=1)  # (N, C)
    shift = -mean.repeat_interleave(cpg, dim=1) * scale
    if weight is not None:
        scale = scale * weight.float()
        shift = shift * weight.float()
    if bias is not None:
        shift = shift + bias.float()
    if pre_bias is not None:  # (x + p) * scale + shift: the deferred bias folds into the shift
        shift = shift + pre_bias.float() * scale
    return (x * scale[:, :, None, None] + shift[:, :, None, None]).to(x.dtype)


class ChannelsLastGroupNorm(nn.Module):
    """Drop-in replacement of an ``nn.GroupNorm`` (shares its parameters) that uses ``group_norm``."""

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.num_channels, self.eps = gn.num_groups, gn.num_channels, gn.eps
        self.weight, self.bias = gn.weight, gn.bias

    def forward(self, x: torch.Tensor, pre_bias: torch.Tensor | None = None) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, pre_bias)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


def replace_group_norms(module: nn.Module, make: Callable[[nn.GroupNorm], nn.Module]) -> int:
    """Replace every ``nn.GroupNorm`` under ``module`` in place by ``make(group_norm)``; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, make(child))
            count += 1
        else:
            count += replace_group_norms(child, make)
    return count


def use_channels_last_group_norm(module: nn.Module) -> int:
    """Replace every ``nn.GroupNorm`` under ``module`` by a ``ChannelsLastGroupNorm``; returns how many."""
    return replace_group_norms(module, ChannelsLastGroupNorm)
