"""EDM math of the release: v-prediction scaling with EDM c_noise, weighting, sigma sampling, sampler."""

from __future__ import annotations

import math

import pytest
import torch

from model.edm import (
    bernoulli,
    cfg_scale_ramp,
    cfg_scales,
    denoise,
    drop_conditions,
    edm_loss,
    euler_edm_sample,
    karras_sigmas,
    loss_weight,
    sample_cond_aug,
    sample_lognormal,
    spatiotemporal_cfg_scale,
    v_target,
    vscaling_edm,
)


def test_scaling_values_at_sigma_one_and_identities():
    c_skip, c_out, c_in, c_noise = vscaling_edm(torch.tensor([1.0]))
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(-1 / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / math.sqrt(2))
    assert c_noise.item() == pytest.approx(0.0)
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 700.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = vscaling_edm(sigma)
    torch.testing.assert_close(c_noise, 0.25 * sigma.log())
    # EDM with sigma_data = 1: unit-variance network input, c_out^2 = sigma^2 * c_skip ...
    torch.testing.assert_close(c_in.square() * (sigma.square() + 1), torch.ones_like(sigma))
    torch.testing.assert_close(c_out.square(), sigma.square() * c_skip)
    # ... and the weighting cancels c_out: lambda * c_out^2 = 1 (L2 in v space).
    torch.testing.assert_close(loss_weight(sigma) * c_out.square(), torch.ones_like(sigma))


def test_perfect_v_prediction_returns_the_clean_latent():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, 8, 8, generator=g, dtype=torch.float64)
    n = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 1.5, 300.0], dtype=torch.float64)
    x_noisy = x0 + sigma[:, None, None, None, None, None] * n
    d = denoise(v_target(x0, n, sigma), x_noisy, sigma)
    torch.testing.assert_close(d, x0, rtol=1e-9, atol=1e-9)
    assert edm_loss(d, x0, sigma).abs().max() < 1e-15
    # An error of e in the network output costs exactly mean(e^2) at every sigma.
    e = 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    loss = edm_loss(denoise(v_target(x0, n, sigma) + e, x_noisy, sigma), x0, sigma)
    torch.testing.assert_close(loss.double(), e.square().reshape(3, -1).mean(1), rtol=1e-5, atol=0)


def test_weights_are_finite_and_decreasing():
    sigma = torch.logspace(-3, 3, 50)
    w = loss_weight(sigma)
    assert torch.isfinite(w).all() and (w >= 1).all() and (w[1:] <= w[:-1]).all()


def test_lognormal_sigma_statistics():
    g = torch.Generator().manual_seed(1)
    s = sample_lognormal(200_000, 1.0, 1.6, g)
    assert s.log().mean().item() == pytest.approx(1.0, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.6, abs=0.02)
    assert (s > 0).all()
    u = sample_cond_aug(50_000, "uniform", 0, 0, 0.0, 0.2, g)
    assert u.min() >= 0 and u.max() <= 0.2 and u.mean().item() == pytest.approx(0.1, abs=0.005)
    assert torch.equal(sample_cond_aug(3, "fixed", 0, 0, 1e-5, 0, g), torch.full((3,), 1e-5))
    with pytest.raises(ValueError, match="'gauss'"):
        sample_cond_aug(3, "gauss", 0, 0, 0, 0, g)
    assert bernoulli(100_000, 0.1, g).float().mean().item() == pytest.approx(0.1, abs=0.005)


def test_discretization_and_cfg_ramp():
    s = karras_sigmas(50)
    assert s.shape == (51,) and s[-1] == 0
    assert s[0].item() == pytest.approx(700.0, rel=1e-5) and s[-2].item() == pytest.approx(0.002, rel=1e-4)
    assert (s[1:] < s[:-1]).all()
    r = cfg_scale_ramp(12, 4)
    assert r.shape == (12, 4) and r[0, 0] == 1.0 and r[-1, -1] == 2.0
    assert r[0, 1] == pytest.approx(1 + 1 / 47)  # view-minor: the next view of frame 0 comes next
    assert r[1, 0] == pytest.approx(1 + 4 / 47)


def test_euler_sampler_recovers_a_point_mass_and_applies_guidance():
    target = torch.full((1, 2, 3, 4, 2, 2), 0.7)
    x = euler_edm_sample(lambda x, s, c: target.expand_as(x), target.shape, num_steps=10, cfg_lo=1, cfg_hi=1)
    torch.testing.assert_close(x, target)
    # With guidance D = D_u + s (D_c - D_u): conditional 1, unconditional 0 -> the ramp itself.
    x = euler_edm_sample(
        lambda x, s, c: torch.full_like(x, 1.0 if c else 0.0), target.shape, num_steps=5, cfg_lo=1, cfg_hi=2
    )
    ramp = cfg_scale_ramp(2, 3)[None, :, :, None, None, None].expand(target.shape)
    torch.testing.assert_close(x, ramp)


def test_spatiotemporal_guidance_known_values():
    """The 8-view release's schedule: 0.5 * frame ramp + 0.5 * triangle over views, mapped to [lo, hi]."""
    s = spatiotemporal_cfg_scale(5, 8, 1.5, 2.5)
    tri = torch.tensor([0, 2 / 7, 4 / 7, 6 / 7, 6 / 7, 4 / 7, 2 / 7, 0])
    expected = 1.5 + 0.5 * torch.linspace(0, 1, 5)[:, None] + 0.5 * tri[None, :]
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-6)
    assert s[0, 0] == 1.5 and s.argmax() == 4 * 8 + 3  # peak: last frame, middle views
    assert torch.equal(cfg_scales("spatiotemporal", 5, 8, 1.5, 2.5), s)
    assert torch.equal(cfg_scales("linear", 12, 4, 1.0, 2.0), cfg_scale_ramp(12, 4))
    with pytest.raises(ValueError, match="guidance"):
        cfg_scales("cosine", 2, 2, 1, 2)


def test_drop_conditions_is_the_release_unconditional_branch():
    cond, clip = torch.randn(3, 2, 4, 5, 5), torch.randn(3, 2, 16)
    keep = torch.tensor([1.0, 0.0, 1.0])
    ref_mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    out = drop_conditions(keep, cond, clip, ref_mask)
    assert set(out) == {"cond_latent", "clip_emb", "ref_mask", "cond_sigma_mask"}
    assert torch.equal(out["cond_latent"][[0, 2]], cond[[0, 2]]) and not out["cond_latent"][1].any()
    assert torch.equal(out["clip_emb"][[0, 2]], clip[[0, 2]]) and not out["clip_emb"][1].any()
    assert torch.equal(out["ref_mask"], torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(out["cond_sigma_mask"], keep)
    assert torch.equal(drop_conditions(keep, cond, clip)["ref_mask"], keep)
    with pytest.raises(ValueError, match="keep must be"):
        drop_conditions(torch.ones(2), cond, clip)


def test_sampler_takes_given_noise_and_checks_its_shape():
    target = torch.full((1, 2, 3, 4, 2, 2), 0.7)
    noise = torch.randn(target.shape)
    a = euler_edm_sample(lambda x, s, c: x * 0.5, target.shape, num_steps=3, cfg_lo=1, cfg_hi=1, noise=noise)
    g = torch.Generator().manual_seed(5)
    b = euler_edm_sample(
        lambda x, s, c: x * 0.5,
        target.shape,
        num_steps=3,
        cfg_lo=1,
        cfg_hi=1,
        noise=torch.randn(target.shape, generator=torch.Generator().manual_seed(5)),
    )
    c = euler_edm_sample(lambda x, s, c: x * 0.5, target.shape, num_steps=3, cfg_lo=1, cfg_hi=1, generator=g)
    assert torch.equal(b, c) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="noise must have shape"):
        euler_edm_sample(lambda x, s, c: x, target.shape, num_steps=1, noise=torch.zeros(2))


def test_sampler_zeroes_the_conditioning_in_the_unconditional_branch():
    """Conditional branch: conditioning latents, CLIP, references and the sigma embedding; unconditional: all
    four zeroed (the release's), cameras kept; the cameras of frame 0 serve every frame; fp16 autocast by
    default (as the release)."""
    from model.sampler import sample_latents

    calls = []

    class Recorder(torch.nn.Module):
        def forward(
            self, x, c_noise, *, cond_latent, clip_emb, polar_rad, azimuth_rad, cond_sigma, ref_latents,
            ref_mask, cond_sigma_mask,
        ):  # fmt: skip
            calls.append(
                (
                    cond_latent.abs().sum().item(),
                    clip_emb.abs().sum().item(),
                    ref_mask.sum().item(),
                    cond_sigma_mask.sum().item(),
                    torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                )
            )
            assert x.shape == (1, 3, 2, 4, 8, 8) and cond_latent.shape == (1, 3, 4, 8, 8)
            assert torch.equal(polar_rad, polar[:, 0]) and torch.equal(azimuth_rad, azim[:, 0])
            assert cond_sigma.tolist() == [pytest.approx(1e-5)]
            return torch.zeros_like(x)

    cond, clip = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 16)
    polar = (
        torch.full((1, 3, 2), math.pi / 2) + torch.arange(3.0)[None, :, None]
    )  # (B, F, V): frame 0 is used
    azim = torch.tensor([[1.0, 2.0]])[:, None].expand(1, 3, 2) + torch.arange(3.0)[None, :, None]
    out = sample_latents(
        Recorder(),
        cond,
        clip,
        polar,
        azim,
        torch.randn(1, 2, 4, 8, 8),
        num_steps=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (1, 3, 2, 4, 8, 8) and torch.isfinite(out).all()
    assert len(calls) == 6  # 3 steps x (conditional, unconditional)
    cond_calls, uncond_calls = calls[0::2], calls[1::2]
    assert all(c[0] > 0 and c[1] > 0 and c[2] == 1 and c[3] == 1 for c in cond_calls)
    assert all(c[:4] == (0.0, 0.0, 0.0, 0.0) for c in uncond_calls)
    assert {c[4] for c in calls} == {torch.float16}
    calls.clear()
    sample_latents(Recorder(), cond, clip, polar, azim, num_steps=1, autocast_dtype=None)
    assert calls[0][2] == 0 and calls[0][4] is None  # no references: masked; float32 without autocast


def test_sample_options_follow_the_config():
    from model.sampler import autocast_dtype, sample_options
    from profiles.schema import SampleConfig

    opts = sample_options(SampleConfig(dtype="float32", guidance="spatiotemporal", cfg_min=1.5, cfg_max=2.5))
    assert opts == dict(
        num_steps=50,
        guidance="spatiotemporal",
        cfg_lo=1.5,
        cfg_hi=2.5,
        cond_aug=1e-5,
        autocast_dtype=None,
        sigma_min=0.002,
        sigma_max=700.0,
        rho=7.0,
    )
    assert autocast_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="dtype .float8. is not one of"):
        autocast_dtype("float8")
    from profiles import load_profile
    from profiles.loader import ConfigError

    assert load_profile("sv4d2").sample.dtype == "float16"  # as the release
    cfg = load_profile("demo", ["sample.guidance=spatiotemporal", "sample.cfg_min=1.5", "sample.cfg_max=2.5"])
    assert sample_options(cfg.sample)["guidance"] == "spatiotemporal"
    with pytest.raises(ConfigError, match="cfg_min"):
        load_profile("demo", ["sample.cfg_min=3.0"])
    with pytest.raises(ConfigError, match="dtype"):
        load_profile("demo", ["sample.dtype=float8"])
