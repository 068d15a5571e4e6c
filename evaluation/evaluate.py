"""One object's metrics: a predicted views x frames matrix against its ground truth.

``prepare_ground_truth`` computes what depends on the ground truth alone (composite, mask, CLIP embeddings,
I3D features of every FVD video) once per object, so several systems share it; ``evaluate_object`` then
compares one prediction with it. Both take the loaded `Networks`; a metric whose network is missing is left
out of the result (the runner reports it as skipped).

Per object: image metrics (evaluation/metrics.py), LPIPS and CLIP-S are means over all V x F images; each
FVD variant (evaluation/fvd.py) is the mean of its per-video distances. The returned I3D features let the
runner compute the set-level FVD over all objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.fvd import VARIANTS, clip_indices, mean_or_none, per_video_fvd, variant_videos
from evaluation.metrics import composite_on_white, image_metrics
from evaluation.networks import I3D_RESOLUTION, Networks, clip_embeddings, i3d_features, lpips_distance


@dataclass
class Settings:
    """The knobs of one evaluation (copied from the `evaluation` config section)."""

    alpha_threshold: float = 0.5
    batch_size: int = 16
    fvd_min_frames: int = 16
    fvd_short_clip: Literal["resample", "pad"] = "resample"
    diagonal: Literal["wrap", "main"] = "wrap"
    zigzag_rows: Literal["view", "frame"] = "view"
    device: str = "cpu"


@dataclass
class PreparedGroundTruth:
    """Ground-truth tensors on the evaluation device and the features every system is compared with."""

    num_views: int
    num_frames: int
    rgb: torch.Tensor
    """(V * F, 3, H, W) in [0, 1], composited on white; row v * F + f is view v, frame f."""
    alpha: torch.Tensor
    """(V * F, 1, H, W)."""
    clip: torch.Tensor | None = None
    i3d: dict[str, np.ndarray] = field(default_factory=dict)
    """Variant -> (videos, D) I3D features."""


def _flatten(images: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    if images.ndim != 5:
        raise ValueError(
            f"expected a views x frames matrix of images (V, F, H, W, C), got shape {images.shape}"
        )
    v, f = images.shape[:2]
    rgb, alpha = composite_on_white(torch.from_numpy(np.ascontiguousarray(images)).to(device).flatten(0, 1))
    return rgb, alpha, v, f


def _videos(
    rgb: torch.Tensor, num_views: int, num_frames: int, settings: Settings
) -> dict[str, list[torch.Tensor]]:
    """Variant -> videos (T, 3, 224, 224) cut from the flattened matrix (resized once for all variants)."""
    small = torch.cat(
        [
            F.interpolate(
                rgb[i : i + settings.batch_size], size=(I3D_RESOLUTION,) * 2, mode="bilinear", antialias=True
            )
            for i in range(0, rgb.shape[0], settings.batch_size)
        ]
    )
    out: dict[str, list[torch.Tensor]] = {}
    for variant in VARIANTS:
        videos = []
        for order in variant_videos(variant, num_views, num_frames, settings.diagonal, settings.zigzag_rows):
            flat = [v * num_frames + f for v, f in order]
            idx = [flat[i] for i in clip_indices(len(flat), settings.fvd_min_frames, settings.fvd_short_clip)]
            videos.append(small[idx])
        out[variant] = videos
    return out


def _video_features(
    nets: Networks, rgb: torch.Tensor, v: int, f: int, settings: Settings
) -> dict[str, np.ndarray]:
    if nets.i3d is None:
        return {}
    return {
        variant: i3d_features(nets.i3d, videos, settings.device).numpy().astype(np.float64)
        for variant, videos in _videos(rgb, v, f, settings).items()
    }


def prepare_ground_truth(rgba: np.ndarray, nets: Networks, settings: Settings) -> PreparedGroundTruth:
    """Ground truth uint8 RGBA (V, F, H, W, 4) -> composite, mask and the features of every system's
    comparison."""
    rgb, alpha, v, f = _flatten(rgba, settings.device)
    prep = PreparedGroundTruth(num_views=v, num_frames=f, rgb=rgb, alpha=alpha)
    if nets.clip is not None:
        prep.clip = clip_embeddings(nets.clip, rgb, settings.batch_size)
    prep.i3d = _video_features(nets, rgb, v, f, settings)
    return prep


def evaluate_object(
    pred_images: np.ndarray, gt: PreparedGroundTruth, nets: Networks, settings: Settings
) -> tuple[dict[str, float | None], dict[str, list[float]], dict[str, np.ndarray]]:
    """(metrics, per-video FVD values, predicted I3D features) of one prediction.

    pred_images: uint8 (V, F, H, W, 3|4) in the ground truth's view/frame order and size. Metrics: the
    weight-free image metrics, ``lpips_<net>`` for each loaded LPIPS backbone, ``clip_s``, and the FVD
    variants (per-video protocol); None where every image's value was undefined (empty foreground).
    """
    rgb, _, v, f = _flatten(pred_images, settings.device)
    if (v, f) != (gt.num_views, gt.num_frames) or rgb.shape != gt.rgb.shape:
        raise ValueError(
            f"prediction {v}x{f} views x frames of {tuple(rgb.shape[-2:])} pixels does not match the ground "
            f"truth's {gt.num_views}x{gt.num_frames} of {tuple(gt.rgb.shape[-2:])}"
        )
    per_image: dict[str, list[torch.Tensor]] = {}
    bs = settings.batch_size
    for i in range(0, rgb.shape[0], bs):
        chunk = image_metrics(
            rgb[i : i + bs], gt.rgb[i : i + bs], gt.alpha[i : i + bs], settings.alpha_threshold
        )
        for name, value in chunk.items():
            per_image.setdefault(name, []).append(value.float().cpu())
    metrics: dict[str, float | None] = {
        name: mean_or_none(torch.cat(values).tolist()) for name, values in per_image.items()
    }
    for net, model in nets.lpips.items():
        metrics[f"lpips_{net}"] = mean_or_none(lpips_distance(model, rgb, gt.rgb, bs).tolist())
    if nets.clip is not None and gt.clip is not None:
        emb = clip_embeddings(nets.clip, rgb, bs)
        metrics["clip_s"] = mean_or_none((emb * gt.clip).sum(dim=-1).tolist())
    feats = _video_features(nets, rgb, v, f, settings)
    per_video = {variant: per_video_fvd(feats[variant], gt.i3d[variant]) for variant in feats}
    for variant, values in per_video.items():
        metrics[variant] = mean_or_none(values)
    return metrics, per_video, feats
