"""Checks of model.kernels.groupnorm's Triton kernel, run by tests/model/test_groupnorm.py in a subprocess
with TRITON_INTERPRET=1 (Triton decides at import time whether kernels are interpreted, so it needs its own
process). Each check prints one line; any failed assertion exits non-zero."""

from __future__ import annotations

import sys
import tempfile

import torch
import torch.nn.functional as F

from model.kernels.groupnorm import group_norm, kernel_applies, use_channels_last_group_norm

# (N, C, H, W, groups, offset): a 4-channels-per-group level, non-power-of-two rows with a masked tail,
# a large mean offset (where sum / sum-of-squares formulas cancel), wide channels, and H*W above 1024 rows
# so that several chunks per image are merged.
SHAPES = [
    (2, 128, 24, 24, 32, 0.0),
    (3, 64, 7, 9, 8, 100.0),
    (2, 512, 9, 9, 32, 3.0),
    (1, 16, 48, 48, 4, -5.0),
    (2, 32, 40, 40, 8, 0.5),
]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def check_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    for n, c, h, w, groups, off in SHAPES:
        x = channels_last(torch.randn(n, c, h, w, generator=g) * 2 + off)
        assert kernel_applies(x, groups), (n, c, h, w)
        mean, rstd = torch.ops.sv4d2.group_norm_stats(x, groups, 1e-6)
        xd = x.double().contiguous().view(n, groups, -1)
        ref_mean = xd.mean(-1)
        ref_rstd = 1.0 / torch.sqrt(xd.var(-1, unbiased=False) + 1e-6)
        err_mean = ((mean.double() - ref_mean).abs() / (1.0 + ref_mean.abs())).max().item()
        err_rstd = ((rstd.double() - ref_rstd).abs() / ref_rstd).max().item()
        assert err_mean < 1e-6 and err_rstd < 1e-5, (n, c, h, w, err_mean, err_rstd)
        print(f"stats {(n, c, h, w, groups, off)}: mean rel err {err_mean:.1e}, rstd rel err {err_rstd:.1e}")


def check_outputs() -> None:
    g = torch.Generator().manual_seed(1)
    for n, c, h, w, groups, off in SHAPES:
        x = channels_last(torch.randn(n, c, h, w, generator=g) * 2 + off)
        weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
        ref = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-6)
        err = (group_norm(x, groups, weight, bias, 1e-6).double() - ref).abs().max().item()
        torch_err = (F.group_norm(x, groups, weight, bias, 1e-6).double() - ref).abs().max().item()
        assert err < 1e-4, (n, c, h, w, err)
        xb = x.bfloat16()
        yb = group_norm(xb, groups, weight, bias, 1e-6)
        refb = F.group_norm(xb.double(), groups, weight.double(), bias.double(), 1e-6)
        err_b = ((yb.double() - refb).abs() / (1.0 + refb.abs())).max().item()
        assert yb.dtype == torch.bfloat16 and yb.is_contiguous(memory_format=torch.channels_last)
        assert err_b < 2**-7, (n, c, h, w, err_b)  # one bf16 rounding of the output
        print(
            f"output {(n, c, h, w, groups, off)}: fp32 max err {err:.1e} (torch {torch_err:.1e}), "
            f"bf16 {err_b:.1e}"
        )


def check_pre_bias() -> None:
    """Statistics and outputs of GroupNorm(x + b) with b added on load, never written out."""
    g = torch.Generator().manual_seed(2)
    for n, c, h, w, groups, off in SHAPES:  # the last two have several row chunks per image
        x = channels_last(torch.randn(n, c, h, w, generator=g) * 2 + off)
        pre = torch.randn(c, generator=g) * 3
        weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
        xd = x.double() + pre.double()[None, :, None, None]
        mean, rstd = torch.ops.sv4d2.group_norm_stats(x, groups, 1e-6, pre)
        ref_mean = xd.contiguous().view(n, groups, -1).mean(-1)
        err_mean = ((mean.double() - ref_mean).abs() / (1.0 + ref_mean.abs())).max().item()
        ref = F.group_norm(xd, groups, weight.double(), bias.double(), 1e-6)
        err = (group_norm(x, groups, weight, bias, 1e-6, pre_bias=pre).double() - ref).abs().max().item()
        assert err_mean < 1e-6 and err < 1e-4, (n, c, h, w, err_mean, err)
        # bf16 activations and bias, as in the encoder: within one bf16 rounding of the float64 result
        xb, preb = x.bfloat16(), pre.bfloat16()
        refb = F.group_norm(
            xb.double() + preb.double()[None, :, None, None], groups, weight.double(), bias.double(), 1e-6
        )
        yb = group_norm(xb, groups, weight, bias, 1e-6, pre_bias=preb)
        err_b = ((yb.double() - refb).abs() / (1.0 + refb.abs())).max().item()
        assert err_b < 2**-7, (n, c, h, w, err_b)
        print(
            f"pre_bias {(n, c, h, w, groups, off)}: mean rel err {err_mean:.1e}, output max err {err:.1e}, "
            f"bf16 {err_b:.1e}"
        )


def check_compiled() -> None:
    x = channels_last(torch.randn(2, 32, 12, 12))
    weight, bias = torch.randn(32), torch.randn(32)
    eager = group_norm(x, 8, weight, bias, 1e-6)
    compiled = torch.compile(group_norm, backend="aot_eager", fullgraph=True)(x, 8, weight, bias, 1e-6)
    assert torch.equal(eager, compiled)
    pre = torch.randn(32)
    eager = group_norm(x, 8, weight, bias, 1e-6, pre)
    compiled = torch.compile(group_norm, backend="aot_eager", fullgraph=True)(x, 8, weight, bias, 1e-6, pre)
    assert torch.equal(eager, compiled)
    print("torch.compile(aot_eager, fullgraph): equal to eager")


@torch.inference_mode()
def check_vae_encoder() -> None:
    from model.encoders import make_tiny_encoders
    from model.vae import load_vae

    with tempfile.TemporaryDirectory() as tmp:
        vae = load_vae(make_tiny_encoders(tmp)["vae_path"]).to(memory_format=torch.channels_last)
    x = channels_last(torch.rand(2, 3, 64, 64) * 2 - 1)
    before = vae.encoder(x)
    expected = sum(isinstance(m, torch.nn.GroupNorm) for m in vae.encoder.modules())
    replaced = use_channels_last_group_norm(vae.encoder)
    after = vae.encoder(x)
    assert replaced == expected > 0, (replaced, expected)
    err = (after - before).abs().max().item()
    assert err < 1e-4, err
    print(f"tiny VAE encoder: {replaced} GroupNorms replaced, max output difference {err:.1e}")
    from model.kernels.vae_encoder import encoder_forward, supports_deferred_bias

    assert supports_deferred_bias(vae.encoder)
    deferred = encoder_forward(vae.encoder, x)
    err = (deferred - before).abs().max().item()
    assert err < 1e-4, err
    print(f"tiny VAE encoder, deferred convolution biases: max output difference {err:.1e}")


if __name__ == "__main__":
    check_statistics()
    check_outputs()
    check_pre_bias()
    check_compiled()
    check_vae_encoder()
    print("all groupnorm checks passed")
    sys.exit(0)
