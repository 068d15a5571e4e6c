"""Per-image metrics that need no weights: PSNR, SSIM and MSE, on the whole image or the foreground.

Images are float RGB in [0, 1], (N, 3, H, W), composited on white (SV3D/SV4D outputs and ground truth are
on white). PSNR and SSIM come from torchmetrics (data range 1; SSIM with its default 11x11 Gaussian window,
sigma 1.5, K = (0.01, 0.03), as scikit-image's ``gaussian_weights=True, use_sample_covariance=False``).

Regions. ``whole``: every pixel. ``foreground``: the pixels where the ground truth's alpha exceeds a
threshold (the object; predictions of the diffusion model carry no alpha). Foreground MSE averages the
squared error over those pixels and the three channels; foreground PSNR is ``-10 log10`` of it; foreground
SSIM averages torchmetrics' per-pixel SSIM map over them (SSIM always leaves out the 5-pixel border where
the window would reach outside the image, as scikit-image). An image with no foreground pixel gives NaN in
the foreground metrics (skipped by the averages), never an error.

PSNR is capped at ``PSNR_CAP_DB`` (an MSE of 1e-10): identical images would otherwise give inf, which JSON
cannot hold and which would swamp a mean.
"""

from __future__ import annotations

import numpy as np
import torch

PSNR_CAP_DB = 100.0
SSIM_BORDER = 5
"""Half the 11-pixel Gaussian window: SSIM map pixels closer to the edge see padding."""
IMAGE_METRICS = ("psnr", "ssim", "mse", "psnr_fg", "ssim_fg", "mse_fg")


def composite_on_white(images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (..., H, W, C), C = 3 (RGB) or 4 (straight-alpha RGBA) -> RGB (..., 3, H, W) in [0, 1] over
    white, and alpha (..., 1, H, W) (ones for RGB)."""
    # a tensor stays where it is (np.asarray would fail on a CUDA tensor); arrays become CPU tensors
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.ndim < 3 or x.shape[-1] not in (3, 4):
        raise ValueError(
            f"expected uint8 RGB or RGBA images (..., H, W, 3|4), got {x.dtype} {tuple(x.shape)}"
        )
    x = x.movedim(-1, -3).float() / 255.0
    if x.shape[-3] == 3:
        return x, torch.ones_like(x[..., :1, :, :])
    rgb, alpha = x[..., :3, :, :], x[..., 3:, :, :]
    return rgb * alpha + (1.0 - alpha), alpha


def _check_pair(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both be (N, 3, H, W)"
        )


def mse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean squared error (N,); with a boolean mask (N, 1, H, W), over the masked pixels only."""
    _check_pair(pred, gt)
    err = (pred.float() - gt.float()) ** 2
    if mask is None:
        return err.mean(dim=(1, 2, 3))
    m = mask.to(err.dtype).expand_as(err)
    return (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))  # 0/0 = NaN for an empty mask


def psnr_from_mse(err: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for data range 1, capped at PSNR_CAP_DB."""
    return (-10.0 * torch.log10(err.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).where(err.isfinite(), err)


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (N,) of the whole image (torchmetrics), capped at PSNR_CAP_DB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(pred, gt)
    value = peak_signal_noise_ratio(pred.float(), gt.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return value.clamp_max(PSNR_CAP_DB)


def ssim(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image SSIM (N,): torchmetrics' SSIM map averaged over the pixels whose whole window lies inside
    the image (as scikit-image and Wang et al.; torchmetrics' own mean also counts the reflect-padded
    border); with a mask, over the masked ones of those pixels."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(pred, gt)
    if min(pred.shape[-2:]) <= 2 * SSIM_BORDER:
        raise ValueError(
            f"SSIM needs images larger than {2 * SSIM_BORDER} pixels, got {tuple(pred.shape[-2:])}"
        )
    _, full = structural_similarity_index_measure(
        pred.float(), gt.float(), data_range=1.0, reduction="none", return_full_image=True
    )
    b = SSIM_BORDER
    full = full[..., b:-b, b:-b]
    if mask is None:
        return full.mean(dim=(1, 2, 3))
    m = mask[..., b:-b, b:-b].to(full.dtype).expand_as(full)
    return (full * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))


def image_metrics(
    pred: torch.Tensor, gt: torch.Tensor, gt_alpha: torch.Tensor, alpha_threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """All weight-free metrics per image: {name: (N,)} for the names of IMAGE_METRICS."""
    mask = gt_alpha > alpha_threshold
    err_fg = mse(pred, gt, mask)
    return {
        "psnr": psnr(pred, gt),
        "ssim": ssim(pred, gt),
        "mse": mse(pred, gt),
        "psnr_fg": psnr_from_mse(err_fg),
        "ssim_fg": ssim(pred, gt, mask),
        "mse_fg": err_fg,
    }
