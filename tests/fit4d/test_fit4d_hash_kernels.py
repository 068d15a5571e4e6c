"""The fused Triton hash-encoding kernels (fit4d/field_components/hash_kernels.py) against the PyTorch
encoding.

The kernels run here under Triton's interpreter (TRITON_INTERPRET=1 on CPU tensors, set before triton is
imported, hence a subprocess); the same source compiles for the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fit4d.fields import DynamicNeRF
from profiles.schema import Fit4DFieldConfig

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package (make installs it)")

ROOT = Path(__file__).resolve().parents[2]

COMPARE = r"""
import json, torch
from fit4d.field_components import hash_kernels
from fit4d.field_components.hash_grid import HashGrid
assert hash_kernels.available(torch.device("cpu")), "the interpreter did not take"
torch.manual_seed(0)
grids = {
    # 3D: 2 dense levels, 2 hashed (2^8 rows)
    "3d": dict(num_levels=4, log2_hashmap_size=8, base_resolution=2, max_resolution=16, dim=3),
    # 4D with per-axis resolutions (coarser time), as the deformation's: 1 dense level, 2 hashed
    "4d": dict(num_levels=3, log2_hashmap_size=8, axis_resolutions=[[2] * 4, [5, 5, 5, 3], [9, 9, 9, 4]]),
}
res = {}
for name, kw in grids.items():
    g = HashGrid(features_per_level=2, init_scale=0.5, **kw)
    x = torch.rand(257, g.dim)
    x[:4] = 1.0  # the upper face: the last cell, frac 1
    x[4:8] = 0.0
    x[8] = 1.2  # outside: clamped, no gradient
    x[9, 0] = -0.1
    x[10] = torch.tensor([0.5, 0.25, 0.125, 0.75][: g.dim])  # on cell faces of every level
    grad_out = torch.randn(x.shape[0], g.output_dim)
    out = {}
    for kernel in ("torch", "triton"):
        g.kernel = kernel
        xr = x.clone().requires_grad_(True)
        enc = g(xr)
        gx, gt = torch.autograd.grad((enc * grad_out).sum(), [xr, g.table])
        xo = x.clone().requires_grad_(True)
        (gx_only,) = torch.autograd.grad((g(xo) * grad_out).sum(), xo)  # the normals' derivative
        (gt_only,) = torch.autograd.grad((g(x) * grad_out).sum(), g.table)  # x without grad (static)
        out[kernel] = (enc.detach(), gx, gt, gx_only, gt_only)
    names = ("forward", "grad_x", "grad_table", "grad_x_only", "grad_table_only")
    res[name] = {
        k: float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
        for k, a, b in zip(names, out["triton"], out["torch"])
    }
    res[name]["dense_levels"] = g.dense.tolist()
g2 = HashGrid(num_levels=2, features_per_level=2, log2_hashmap_size=6, base_resolution=2, max_resolution=8,
              dim=2)
x2 = torch.rand(33, 2)
enc2 = {}
for kernel in ("torch", "triton"):
    g2.kernel = kernel
    enc2[kernel] = g2(x2)
res["2d"] = "torch" if torch.equal(enc2["torch"], enc2["triton"]) else "kernel"
print(json.dumps(res))
"""


def test_triton_kernels_equal_the_pytorch_encoding_in_3d_and_4d():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", COMPARE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["3d"]["dense_levels"] == [True, True, False, False]
    assert res["4d"]["dense_levels"] == [True, False, False]
    assert res["2d"] == "torch"  # the kernels take 3D and 4D grids; others fall back to PyTorch
    for name in ("3d", "4d"):
        diffs = res[name]
        for key in ("forward", "grad_x", "grad_table", "grad_x_only", "grad_table_only"):
            assert diffs[key] < 1e-5, (name, key, diffs)


def test_without_cuda_or_the_interpreter_the_field_takes_the_pytorch_path():
    """hash_kernel=triton on CPU tensors (no interpreter): the PyTorch encoding, the same numbers (under
    TRITON_INTERPRET=1 the kernels, equal to float rounding)."""
    torch.manual_seed(0)
    small = dict(num_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=32, hidden_dim=16)
    small.update(deform_encoding="hash", deform_num_levels=2, deform_max_resolution=16, deform_hidden_dim=16)
    a = DynamicNeRF(Fit4DFieldConfig(**small))
    b = DynamicNeRF(Fit4DFieldConfig(**small, hash_kernel="triton"))
    b.load_state_dict(a.state_dict())
    x, t = torch.rand(64, 3) - 0.5, torch.rand(64, 1)
    for u, v in zip(a(x, t), b(x, t), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)
