"""model.kernels.groupnorm: channels_last GroupNorm with Triton statistics (the VAE encoder's GPU path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from model.kernels.groupnorm import ChannelsLastGroupNorm, group_norm, kernel_applies

ROOT = Path(__file__).resolve().parents[2]


def test_triton_kernel_matches_float64_in_the_interpreter():
    """The kernel itself, run by Triton's interpreter on the CPU (see tests/model/groupnorm_checks.py)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "model" / "groupnorm_checks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("stats ") for line in lines) == 5
    assert sum(line.startswith("output ") for line in lines) == 5
    assert sum(line.startswith("pre_bias ") for line in lines) == 5
    assert any(line.startswith("tiny VAE encoder, deferred convolution biases") for line in lines)
    assert "all groupnorm checks passed" in lines


def test_falls_back_to_native_group_norm_where_the_kernel_does_not_apply():
    x = torch.randn(2, 24, 6, 6)
    w, b = torch.randn(24), torch.randn(24)
    # CPU without the interpreter, NCHW, non-power-of-two channels: exactly F.group_norm
    assert not kernel_applies(x, 8)
    assert torch.equal(group_norm(x, 8, w, b, 1e-6), F.group_norm(x, 8, w, b, 1e-6))
    gn = torch.nn.GroupNorm(8, 24, eps=1e-6)
    module = ChannelsLastGroupNorm(gn)
    assert module.weight is gn.weight and module.bias is gn.bias
    x.requires_grad_(True)
    y = module(x)
    y.sum().backward()  # autograd path = native GroupNorm
    assert x.grad is not None and torch.equal(y, gn(x))
