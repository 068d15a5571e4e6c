"""GPU correctness of the model's CUDA paths: the Triton GroupNorm kernel, the encoders' GPU path
(channels_last, Triton statistics, deferred biases, compiled, bf16) and a bf16 training step. Marked `gpu`:
on a machine without CUDA they skip with the reason (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.kernels.groupnorm import group_norm, kernel_applies
from tests.model.groupnorm_checks import SHAPES, channels_last

pytestmark = pytest.mark.gpu


def test_triton_group_norm_matches_float64_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    for n, c, h, w, groups, off in SHAPES:
        x = channels_last(torch.randn(n, c, h, w, generator=g, device="cuda") * 2 + off)
        assert kernel_applies(x, groups), (n, c, h, w)
        mean, rstd = torch.ops.sv4d2.group_norm_stats(x, groups, 1e-6)
        xd = x.double().contiguous().view(n, groups, -1)
        ref_mean, ref_rstd = xd.mean(-1), 1.0 / torch.sqrt(xd.var(-1, unbiased=False) + 1e-6)
        assert ((mean.double() - ref_mean).abs() / (1.0 + ref_mean.abs())).max() < 1e-6
        assert ((rstd.double() - ref_rstd).abs() / ref_rstd).max() < 1e-5
        weight = torch.randn(c, generator=g, device="cuda")
        bias = torch.randn(c, generator=g, device="cuda")
        pre = torch.randn(c, generator=g, device="cuda")
        ref = F.group_norm(x.double() + pre.double()[None, :, None, None], groups, weight.double(),
                           bias.double(), 1e-6)  # fmt: skip
        got = group_norm(x, groups, weight, bias, 1e-6, pre_bias=pre)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert (got.double() - ref).abs().max() < 1e-4, (n, c, h, w)


def test_encoders_gpu_path_matches_the_cpu_float32_path(tmp_path):
    """channels_last + Triton statistics + deferred biases + compile, bf16, static batches: the same latents
    and embeddings as the plain float32 CPU path, up to bf16 rounding."""
    from model.encoders import Encoders, EncoderSpec, make_tiny_encoders

    paths = make_tiny_encoders(tmp_path / "tiny")
    cpu = Encoders(EncoderSpec(**paths, tiny=True))
    gpu = Encoders(
        EncoderSpec(
            **paths,
            tiny=True,
            device="cuda",
            dtype="bfloat16",
            channels_last=True,
            compile=True,
            static_batch=4,
        )  # fmt: skip
    )
    assert gpu._deferred_bias  # the path under test is the one production takes
    rgba = np.random.default_rng(0).integers(0, 256, size=(6, 64, 64, 4), dtype=np.uint8)  # 4 + 2 padded
    want, got = cpu.encode(rgba), gpu.encode(rgba)
    for name in ("mean", "std", "clip"):
        a, b = getattr(want, name), getattr(got, name)
        assert a.shape == b.shape
        scale = np.abs(a).max()
        assert np.abs(a - b).max() < 0.05 * scale + 1e-3, (name, np.abs(a - b).max(), scale)


def test_bf16_training_step_on_cuda_matches_float32_on_cpu():
    from model.ema import EMA
    from model.train import configure_stage, param_groups
    from model.train_step import train_step
    from tests.model.test_model_network import inputs, random_model

    x = inputs(b=2, f=2, v=2, hw=8)
    g = torch.Generator().manual_seed(3)
    batch = {
        "latents": x["x"][:, :, :2],
        "noise": torch.randn(x["x"][:, :, :2].shape, generator=g),
        "sigma": torch.tensor([0.5, 2.0]),
        "cond_latents": x["cond_latent"],
        "cond_noise": torch.randn(x["cond_latent"].shape, generator=g),
        "cond_aug": torch.tensor([0.02, 0.05]),
        "clip": x["clip_emb"],
        "polar": x["polar_rad"][:, 0, :2],
        "azimuth": x["azimuth_rad"][:, 0, :2],
        "ref_latents": x["ref_latents"][:, :2],
        "drop_cond": torch.tensor([False, True]),
        "ref_drop": torch.tensor([False, False]),
    }
    results = {}
    for device, dtype in (("cpu", None), ("cuda", torch.bfloat16)):
        net = random_model(seed=0).to(device)
        configure_stage(net, "4d")
        opt = torch.optim.AdamW(param_groups(net, 0.01), lr=1e-4)
        res = train_step(net, net, opt, EMA(net, 0.9), [batch], torch.device(device), autocast_dtype=dtype,
                         grad_clip=1.0)  # fmt: skip
        assert res.finite
        results[device] = res
    assert results["cuda"].loss == pytest.approx(results["cpu"].loss, rel=0.05)
    assert results["cuda"].grad_norm == pytest.approx(results["cpu"].grad_norm, rel=0.1)
