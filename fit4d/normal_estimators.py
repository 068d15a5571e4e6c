"""Pseudo ground-truth surface normals for the normal loss and the visibility weights (paper sec. 4:
"surface normal estimated from Omnidata"): a `NormalEstimator` turns images into camera-space normals,
`video_normal_targets` turns those into the world-space targets the loop reads (`Fitter.normal_targets`).

Omnidata's output convention, read from the official demo outputs (EPFL-VILAB/omnidata
`assets/demo/test1_normal.png`: a floor is (0.5, 0, 0.5), a wall facing right (1, 0.5, 0.5), the back wall
facing the camera (0.5, 0.5, 0); every demo image keeps blue <= 0.5 on visible surfaces): n = 2 * out - 1 is
the outward unit normal in the OpenCV camera axes of the image (x right, y down, z forward), the axes of
our shards' cameras, so the world normal is R_c2w n.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.omnidata_dpt import OmnidataDPT, OmnidataDPTConfig, load_omnidata_dpt
from profiles.schema import Fit4DLossConfig

NormalEstimator = Callable[[torch.Tensor], torch.Tensor]
"""(N, H, W, 3) float RGB in [0, 1] -> (N, H, W, 3) unit outward normals in each image's OpenCV camera
axes (x right, y down, z forward: a surface facing the camera has z < 0)."""


def decode_omnidata(output: torch.Tensor) -> torch.Tensor:
    """The network's (..., 3) output -> unit camera-space normals: the official clamp to [0, 1], then
    2 * out - 1, normalized."""
    n = output.clamp(0.0, 1.0) * 2.0 - 1.0
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def camera_to_world_normals(normals: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) camera-space normals, (N, 4, 4) OpenCV camera-to-world -> (N, H, W, 3) unit world
    normals (directions: the rotation only)."""
    world = torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3].to(normals.dtype), normals)
    return world / world.norm(dim=-1, keepdim=True).clamp(min=1e-6)


class OmnidataNormalEstimator:
    """Omnidata v2's DPT-Hybrid as a `NormalEstimator`. Preprocessing as the official demo (bilinear
    resize to 384, RGB in [0, 1], no normalization), except that a non-square image is padded to a square
    by repeating its border (the background) instead of centre-cropped, so every pixel gets a normal; the
    output is resized back (bilinear) and renormalized."""

    def __init__(self, model: OmnidataDPT, batch_size: int = 8, description: str = "omnidata") -> None:
        self.model = model
        self.batch_size = batch_size
        self.description = description
        self.size = model.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = rgb.shape
        if n == 0:
            return rgb.new_zeros(rgb.shape)
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        out = []
        for s in range(0, n, self.batch_size):
            x = rgb[s : s + self.batch_size].to(self.device, torch.float32).permute(0, 3, 1, 2)
            if (h, w) != (side, side):
                x = F.pad(x, (left, side - w - left, top, side - h - top), mode="replicate")
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
            y = decode_omnidata(self.model(x.clamp(0.0, 1.0)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            y = F.interpolate(y, size=(side, side), mode="bilinear", antialias=True)
            out.append(y[:, :, top : top + h, left : left + w].permute(0, 2, 3, 1))
        normals = torch.cat(out).to(rgb.device)
        return normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-6)


@lru_cache(maxsize=1)
def _cached_omnidata(path: str, device: str, batch_size: int) -> OmnidataNormalEstimator:
    model = load_omnidata_dpt(path, OmnidataDPTConfig(), device)
    return OmnidataNormalEstimator(model, batch_size, description=f"omnidata ({path})")


def omnidata_estimator(loss: Fit4DLossConfig, device: torch.device | str) -> OmnidataNormalEstimator:
    """The configured Omnidata estimator (loaded once per process and device)."""
    path = Path(loss.omnidata_checkpoint).expanduser()
    if not loss.omnidata_checkpoint or not path.is_file():
        raise FileNotFoundError(
            f"Omnidata normal checkpoint not found at {str(path)!r}: set fit4d.loss.omnidata_checkpoint to "
            "omnidata_dpt_normal_v2.ckpt (EPFL-VILAB/omnidata) or fit4d.loss.normal_estimator=nerf"
        )
    return _cached_omnidata(str(path), str(torch.device(device)), loss.omnidata_batch_size)


def describe(estimator: NormalEstimator) -> str:
    return getattr(estimator, "description", None) or getattr(estimator, "__name__", type(estimator).__name__)


def video_normal_targets(
    estimator: NormalEstimator,
    rgb: torch.Tensor,
    alpha: torch.Tensor,
    c2w: torch.Tensor,
    views: np.ndarray,
) -> torch.Tensor:
    """World-space normal targets (V, F, H, W, 3) from the estimator run on rgb (V, F, H, W, 3) of `views`
    with cameras c2w (V, 4, 4); zero on the background (alpha (V, F, H, W) <= 0.5) and at other views."""
    num_views, num_frames, h, w, _ = rgb.shape
    idx = torch.as_tensor(np.asarray(views), dtype=torch.long, device=rgb.device)
    images = rgb[idx].reshape(-1, h, w, 3)
    cams = c2w[idx].repeat_interleave(num_frames, 0)
    cam_normals = estimator(images).to(rgb.device, torch.float32)
    if cam_normals.shape != images.shape:
        raise ValueError(
            f"normal estimator returned {tuple(cam_normals.shape)}, expected {tuple(images.shape)}"
        )
    world = camera_to_world_normals(cam_normals, cams).reshape(len(idx), num_frames, h, w, 3)
    world = world * (alpha[idx] > 0.5)[..., None]
    targets = torch.zeros(num_views, num_frames, h, w, 3, device=rgb.device)
    targets[idx] = world
    return targets
