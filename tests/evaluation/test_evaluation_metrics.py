"""Weight-free image metrics: known answers and an independent SSIM (evaluation/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation import metrics


def test_psnr_of_a_known_noise_level() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.full((4, 3, 128, 128), 0.5)
    sigma = 0.05  # 0.5 +/- 4 sigma stays inside [0, 1]: no clipping bias
    pred = gt + sigma * torch.randn(gt.shape, generator=g)
    expected = 20.0 * math.log10(1.0 / sigma)  # 26.02 dB
    assert metrics.psnr(pred, gt).tolist() == pytest.approx([expected] * 4, abs=0.05)
    assert metrics.mse(pred, gt).tolist() == pytest.approx([sigma**2] * 4, rel=0.02)


def test_psnr_of_identical_images_is_capped_not_inf() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert metrics.psnr(x, x).tolist() == [metrics.PSNR_CAP_DB] * 2
    assert metrics.psnr_from_mse(torch.zeros(1)).tolist() == [metrics.PSNR_CAP_DB]


def test_ssim_is_one_for_identical_images() -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert metrics.ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    mask = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    mask[..., 8:24, 8:24] = True
    assert metrics.ssim(x, x, mask).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_ssim_matches_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    gt = rng.uniform(size=(2, 48, 40, 3))
    pred = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1)
    ours = metrics.ssim(
        torch.from_numpy(pred).permute(0, 3, 1, 2).float(), torch.from_numpy(gt).permute(0, 3, 1, 2).float()
    )
    ref = [
        structural_similarity(
            p,
            g,
            data_range=1.0,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for p, g in zip(pred, gt)
    ]
    assert ours.tolist() == pytest.approx(ref, abs=2e-4)


def test_foreground_metrics_see_only_the_object() -> None:
    gt = torch.ones(1, 3, 20, 20)
    pred = gt.clone()
    pred[..., :10] = 0.8  # error on the left half only
    alpha = torch.zeros(1, 1, 20, 20)
    alpha[..., 10:] = 1.0  # the object is the right half
    out = metrics.image_metrics(pred, gt, alpha)
    assert out["mse"].item() == pytest.approx(0.04 / 2)
    assert out["mse_fg"].item() == pytest.approx(0.0)
    assert out["psnr_fg"].item() == metrics.PSNR_CAP_DB
    alpha[..., :10], alpha[..., 10:] = 1.0, 0.0  # now the object is where the error is
    out = metrics.image_metrics(pred, gt, alpha)
    assert out["mse_fg"].item() == pytest.approx(0.04)
    assert out["psnr_fg"].item() == pytest.approx(-10 * math.log10(0.04), rel=1e-5)


def test_empty_foreground_is_nan_not_an_error() -> None:
    x = torch.rand(2, 3, 12, 12)
    out = metrics.image_metrics(x, x * 0.5, torch.zeros(2, 1, 12, 12))
    for name in ("mse_fg", "psnr_fg", "ssim_fg"):
        assert torch.isnan(out[name]).all(), name
    assert torch.isfinite(out["psnr"]).all()


def test_composite_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black -> white
    rgba[1, 0] = (0, 0, 0, 51)  # 20% black over white -> 0.8
    rgb, alpha = metrics.composite_on_white(rgba)
    assert rgb.shape == (3, 2, 2) and alpha.shape == (1, 2, 2)
    assert rgb[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert rgb[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert rgb[:, 1, 0].tolist() == pytest.approx([0.8] * 3)
    rgb_t, _ = metrics.composite_on_white(torch.from_numpy(rgba))  # tensors too (on any device)
    assert torch.equal(rgb_t, rgb)
    rgb3, alpha3 = metrics.composite_on_white(rgba[..., :3])
    assert alpha3.min().item() == 1.0 and rgb3[:, 0, 1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="uint8 RGB or RGBA"):
        metrics.composite_on_white(rgba.astype(np.float32))


def test_mismatched_shapes_are_an_error() -> None:
    with pytest.raises(ValueError, match="must both be"):
        metrics.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
