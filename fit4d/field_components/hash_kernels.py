"""Fused Triton kernels of the hash encoding (fit4d/field_components/hash_grid.py), forward and backward.

The PyTorch encoding materializes (N, L, 2^D) index, weight and feature tensors and runs a few dozen
elementwise kernels over them; these kernels compute one (point, level) pair per lane and touch only x, the
table and the output. Forward: out[n, l F + f] = sum_c w_c table[row_c, f]. Backward: the table gradient
by atomic adds of w_c g (the same scatter as `gather_rows`), and dL/dx_d = sum_c (g . table[row_c])
dw_c/dx_d with dw_c/dx_d = res_d (+1 | -1) prod_{e != d} (1 - frac_e | frac_e), summed over levels
atomically. Corner rows are computed exactly as `HashGrid.corner_indices` (dense mixed-radix index or
the int64 prime XOR hash mod T, plus the level's offset).

Only once differentiable: the normal losses' second derivative needs the PyTorch encoding, which
`fit4d.nerf.hash_kernel: auto` then picks (`fit4d.fields.resolve_hash_kernel`). Import guarded: without
Triton, `available()` is False and nothing here is compiled. Under TRITON_INTERPRET=1 (set before import)
the kernels run on CPU tensors, which is how the tests compare them with the PyTorch encoding. On a GPU,
Triton contracts x r - floor(x r) into one FMA where PyTorch rounds x r first, so a cell fraction can differ
by an ulp of x r (6e-5 at 2048 cells): a GPU comparison needs a tolerance of that order. Not yet done: the
normals' derivative (x only) still computes the table gradient, which autograd then drops.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no Triton; the PyTorch encoding serves
    triton = None

# Triton picks the interpreter when the kernels are decorated (at import), so read the variable then too
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device` (CUDA with Triton, or any device under the interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or _INTERPRET


if triton is not None:
    # hash_grid.PRIMES[1:]; jitted code reads globals only as constexpr
    P1 = tl.constexpr(2654435761)
    P2 = tl.constexpr(805459861)
    P3 = tl.constexpr(3674653429)

    @triton.jit
    def _corner_row(
        c: tl.constexpr, b0, b1, b2, b3, lvl, strides_ptr, dense_ptr, offsets_ptr, T, D: tl.constexpr
    ):
        """Table rows (BLOCK,) of corner c (bit d set: the upper side along axis d) of the cells with lower
        corners b0..b3 at level lvl."""
        c0, c1, c2, c3 = b0 + (c & 1), b1 + ((c >> 1) & 1), b2 + ((c >> 2) & 1), b3 + ((c >> 3) & 1)
        s0 = tl.load(strides_ptr + lvl * D + 0)
        s1 = tl.load(strides_ptr + lvl * D + 1)
        s2 = tl.load(strides_ptr + lvl * D + 2)
        dense_idx = c0 * s0 + c1 * s1 + c2 * s2
        hashed = c0 ^ (c1 * P1) ^ (c2 * P2)
        if D == 4:
            s3 = tl.load(strides_ptr + lvl * D + 3)
            dense_idx += c3 * s3
            hashed = hashed ^ (c3 * P3)
        is_dense = tl.load(dense_ptr + lvl) != 0
        # T is a power of 2 and every term is >= 0: the mask is torch.remainder (int64 % is emulated)
        local = tl.where(is_dense, dense_idx, hashed & (T - 1))
        return local + tl.load(offsets_ptr + lvl)

    @triton.jit
    def _cell(x_ptr, offs, mask, d: tl.constexpr, lvl, res_ptr, D: tl.constexpr):
        """(lower corner int64, fraction, resolution) along axis d of level lvl for points offs."""
        x = tl.load(x_ptr + offs * D + d, mask=mask, other=0.0)
        x = tl.minimum(tl.maximum(x, 0.0), 1.0)
        r = tl.load(res_ptr + lvl * D + d)
        pos = x * r.to(tl.float32)
        base = tl.minimum(tl.floor(pos).to(tl.int64), r - 1)
        return base, pos - base.to(tl.float32), r.to(tl.float32)

    @triton.jit
    def _cells(x_ptr, offs, mask, lvl, res_ptr, D: tl.constexpr):
        """`_cell` along each axis (a 4th axis of zeros for D = 3): b0, f0, r0, ..., b3, f3, r3."""
        b0, f0, r0 = _cell(x_ptr, offs, mask, 0, lvl, res_ptr, D)
        b1, f1, r1 = _cell(x_ptr, offs, mask, 1, lvl, res_ptr, D)
        b2, f2, r2 = _cell(x_ptr, offs, mask, 2, lvl, res_ptr, D)
        b3, f3, r3 = b0 * 0, f0 * 0.0, r0 * 0.0
        if D == 4:
            b3, f3, r3 = _cell(x_ptr, offs, mask, 3, lvl, res_ptr, D)
        return b0, f0, r0, b1, f1, r1, b2, f2, r2, b3, f3, r3

    @triton.jit
    def _sides(c: tl.constexpr, f0, f1, f2, f3, D: tl.constexpr):
        """Corner c's multilinear factor per axis: frac where bit d of c is set, else 1 - frac (1 on the
        4th axis of a 3D grid); their product is the corner's weight."""
        s0 = tl.where((c & 1) != 0, f0, 1.0 - f0)
        s1 = tl.where(((c >> 1) & 1) != 0, f1, 1.0 - f1)
        s2 = tl.where(((c >> 2) & 1) != 0, f2, 1.0 - f2)
        s3 = f0 * 0.0 + 1.0
        if D == 4:
            s3 = tl.where(((c >> 3) & 1) != 0, f3, 1.0 - f3)
        return s0, s1, s2, s3

    @triton.jit
    def _hash_fwd(
        x_ptr, table_ptr, out_ptr, res_ptr, strides_ptr, dense_ptr, offsets_ptr, N, T,
        L: tl.constexpr, D: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        lvl = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < N
        fs = tl.arange(0, F)
        b0, f0, r0, b1, f1, r1, b2, f2, r2, b3, f3, r3 = _cells(x_ptr, offs, mask, lvl, res_ptr, D)
        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for c in tl.static_range(2**D):
            s0, s1, s2, s3 = _sides(c, f0, f1, f2, f3, D)
            w = s0 * s1 * s2 * s3
            row = _corner_row(c, b0, b1, b2, b3, lvl, strides_ptr, dense_ptr, offsets_ptr, T, D)
            vals = tl.load(table_ptr + row[:, None] * F + fs[None, :], mask=mask[:, None], other=0.0)
            acc += w[:, None] * vals
        tl.store(out_ptr + offs[:, None] * (L * F) + lvl * F + fs[None, :], acc, mask=mask[:, None])

    @triton.jit
    def _hash_bwd(
        x_ptr, table_ptr, grad_ptr, grad_table_ptr, grad_x_ptr, res_ptr, strides_ptr, dense_ptr,
        offsets_ptr, N, T, L: tl.constexpr, D: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
        NEED_TABLE: tl.constexpr, NEED_X: tl.constexpr,
    ):  # fmt: skip
        lvl = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < N
        fs = tl.arange(0, F)
        b0, f0, r0, b1, f1, r1, b2, f2, r2, b3, f3, r3 = _cells(x_ptr, offs, mask, lvl, res_ptr, D)
        g = tl.load(grad_ptr + offs[:, None] * (L * F) + lvl * F + fs[None, :], mask=mask[:, None], other=0.0)
        gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx3 = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in tl.static_range(2**D):
            s0, s1, s2, s3 = _sides(c, f0, f1, f2, f3, D)
            row = _corner_row(c, b0, b1, b2, b3, lvl, strides_ptr, dense_ptr, offsets_ptr, T, D)
            ptrs = row[:, None] * F + fs[None, :]
            if NEED_TABLE:
                w = s0 * s1 * s2 * s3
                tl.atomic_add(grad_table_ptr + ptrs, w[:, None] * g, mask=mask[:, None], sem="relaxed")
            if NEED_X:
                dot = tl.sum(tl.load(table_ptr + ptrs, mask=mask[:, None], other=0.0) * g, axis=1)
                gx0 += dot * tl.where((c & 1) != 0, 1.0, -1.0) * s1 * s2 * s3 * r0
                gx1 += dot * tl.where(((c >> 1) & 1) != 0, 1.0, -1.0) * s0 * s2 * s3 * r1
                gx2 += dot * tl.where(((c >> 2) & 1) != 0, 1.0, -1.0) * s0 * s1 * s3 * r2
                if D == 4:
                    gx3 += dot * tl.where(((c >> 3) & 1) != 0, 1.0, -1.0) * s0 * s1 * s2 * r3
        if NEED_X:
            tl.atomic_add(grad_x_ptr + offs * D + 0, gx0, mask=mask, sem="relaxed")
            tl.atomic_add(grad_x_ptr + offs * D + 1, gx1, mask=mask, sem="relaxed")
            tl.atomic_add(grad_x_ptr + offs * D + 2, gx2, mask=mask, sem="relaxed")
            if D == 4:
                tl.atomic_add(grad_x_ptr + offs * D + 3, gx3, mask=mask, sem="relaxed")


BLOCK = 128


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, grid) -> torch.Tensor:
        n, dim = x.shape
        if dim != grid.dim or dim not in (3, 4):
            raise ValueError(f"the Triton hash kernels take 3D or 4D grids and points of the grid's dim, got "
                             f"points of dim {dim} for a {grid.dim}D grid")  # fmt: skip
        num_levels, feats = grid.num_levels, grid.features_per_level
        x = x.float().contiguous()
        out = torch.empty(n, num_levels * feats, device=x.device, dtype=torch.float32)
        args = grid_args(grid)
        if n:
            launch = (triton.cdiv(n, BLOCK), num_levels)
            with on_device(x):
                _hash_fwd[launch](x, table, out, *args, n, grid.table_size, num_levels, dim, feats, BLOCK)
        ctx.save_for_backward(x, table)
        ctx.grid = grid
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, table = ctx.saved_tensors
        grid = ctx.grid
        n, dim = x.shape
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if need_x else x.new_zeros(1)
        grad_table = torch.zeros_like(table) if need_table else table.new_zeros(1)
        if n and (need_x or need_table):
            launch = (triton.cdiv(n, BLOCK), grid.num_levels)
            with on_device(x):
                _hash_bwd[launch](
                    x, table, grad.float().contiguous(), grad_table, grad_x, *grid_args(grid), n,
                    grid.table_size, grid.num_levels, dim, grid.features_per_level, BLOCK, need_table, need_x,
                )  # fmt: skip
        return (grad_x if need_x else None), (grad_table if need_table else None), None


def on_device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device and its stream: make that x's (a model on cuda:1)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def grid_args(grid) -> tuple[torch.Tensor, ...]:
    """The level description the kernels read: resolutions and strides (L, D) int64, dense (L,) int32,
    offsets (L,) int64."""
    return (
        grid.resolutions.contiguous(),
        grid.strides.contiguous(),
        grid.dense.to(torch.int32),
        grid.offsets.contiguous(),
    )


def hash_encode(x: torch.Tensor, grid) -> torch.Tensor:
    """`HashGrid` encoding of x (N, D) in [0, 1] through the fused kernels: (N, L F) float32."""
    if triton is None:
        raise RuntimeError("fit4d.nerf.hash_kernel=triton needs the triton package (pip install triton)")
    # clamped here, so its gradient at and beyond the faces is torch.clamp's, as in the PyTorch encoding
    return _HashEncode.apply(x.float().clamp(0.0, 1.0), grid.table, grid)
