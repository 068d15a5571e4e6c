"""Stage 2's new targets: the stage-1 renders, noised to step `refine_step` of the `refine_num_steps`-step
schedule and denoised by the novel-view sampler (paper sec. 4, supplement 7.3).

The loop only needs a `Refiner`: a callable from a `RefineRequest` (all views and frames rendered from the
stage-1 NeRF) to refined images of the same views and frames. `sampler_refiner` is the adapter to the
novel-view sampler's array entry point (model/novel_views.py `NovelViewSampler.generate`); tests also use
stand-in callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from profiles.schema import PipelineConfig


@dataclass
class RefineRequest:
    """rgb (V, F, H, W, 3) float32 renders in [0, 1] on a `background` grey; alpha (V, F, H, W) rendered
    opacity; c2w (V, 4, 4) OpenCV cameras; K (3, 3); elevation/azimuth (V,) degrees relative to the input
    view's; input_rgb (F, H, W, 3) the original input-view video (the sampler's conditioning), input_alpha
    (F, H, W) its alpha (None: opaque); views: the views whose targets the refined images replace (None:
    every view but the input view; the others are returned unchanged)."""

    rgb: np.ndarray
    alpha: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    elevation_deg: np.ndarray
    azimuth_deg: np.ndarray
    input_view: int
    input_rgb: np.ndarray
    background: float
    start_step: int
    num_steps: int
    input_alpha: np.ndarray | None = None
    views: np.ndarray | None = None

    def target_views(self) -> list[int]:
        views = range(self.rgb.shape[0]) if self.views is None else np.asarray(self.views).tolist()
        return sorted({int(v) for v in views} - {int(self.input_view)})


Refiner = Callable[[RefineRequest], np.ndarray]
"""RefineRequest -> refined rgb (V, F, H, W, 3) float32 in [0, 1], the same views and frames."""


def check_refined(request: RefineRequest, refined: np.ndarray) -> np.ndarray:
    refined = np.asarray(refined, np.float32)
    if refined.shape != request.rgb.shape:
        raise ValueError(
            f"refiner returned shape {refined.shape}, expected {request.rgb.shape} (views, frames, H, W, 3)"
        )
    if not np.all(np.isfinite(refined)):
        raise ValueError("refiner returned NaN or Inf")
    return np.clip(refined, 0.0, 1.0)


def on_white(rgb: np.ndarray, alpha: np.ndarray, background: float) -> np.ndarray:
    """Images composited on a `background` grey -> the same on white (the sampler's convention):
    c a + b (1 - a) + (1 - b)(1 - a) = c a + (1 - a)."""
    return np.clip(rgb + (1.0 - background) * (1.0 - alpha[..., None]), 0.0, 1.0).astype(np.float32)


def on_background(rgb: np.ndarray, alpha: np.ndarray, background: float) -> np.ndarray:
    """The inverse of `on_white` for the same alpha (the refined images have none of their own, so the
    render's opacity stands in; with background 1, the default, both are the identity)."""
    return np.clip(rgb - (1.0 - background) * (1.0 - alpha[..., None]), 0.0, 1.0).astype(np.float32)


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """float (..., S, S, 3) -> (..., size, size, 3): antialiased bicubic (down) / bicubic (up), clipped."""
    import torch
    import torch.nn.functional as F

    if images.shape[-3] == size and images.shape[-2] == size:
        return images.astype(np.float32)
    lead = images.shape[:-3]
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).reshape(-1, *images.shape[-3:])
    x = F.interpolate(
        x.permute(0, 3, 1, 2), size=(size, size), mode="bicubic", antialias=size < images.shape[-3]
    )
    return x.permute(0, 2, 3, 1).clamp(0, 1).reshape(*lead, size, size, 3).numpy()


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def refine_with(sampler: Any, request: RefineRequest, seed: int | None = None) -> np.ndarray:
    """One stage-2 refinement with a loaded `NovelViewSampler` (model/novel_views.py).

    The renders of the target views and the input video go on white and to the sampler's resolution; the
    renders are encoded, noised to step `start_step` of `num_steps` and denoised conditioned on the input
    video and the renders' cameras (elevation/azimuth relative to the input view), window by window as the
    sampler does; the result goes back to the request's resolution and background. Views other than the
    target views (the input view, views never trained on) are returned as rendered.
    """
    from model.novel_cameras import CameraSet

    rgb = np.asarray(request.rgb, np.float32)
    v, f, h, w = rgb.shape[:4]
    if h != w:
        raise ValueError(f"the sampler refiner needs square renders, got {h}x{w} (set fit4d.resolution)")
    if request.input_rgb.shape != (f, h, w, 3):
        raise ValueError(f"input_rgb of shape {request.input_rgb.shape}, expected {(f, h, w, 3)}")
    out = rgb.copy()
    views = request.target_views()
    if not views or request.start_step >= request.num_steps:  # nothing to refine / no noise added
        return out
    res = int(sampler.cfg.sample.resolution)
    bg = float(request.background)
    in_alpha = np.ones((f, h, w), np.float32) if request.input_alpha is None else request.input_alpha
    cond = to_uint8(resize_square(on_white(np.asarray(request.input_rgb, np.float32), in_alpha, bg), res))
    cond = np.concatenate([cond, np.full_like(cond[..., :1], 255)], -1)
    init = to_uint8(resize_square(on_white(rgb[views], request.alpha[views], bg), res))
    cams = CameraSet(
        tuple(float(e) for e in request.elevation_deg[views]),
        tuple(float(a) % 360.0 for a in request.azimuth_deg[views]),
    )
    images = sampler.generate(
        cond,
        cams,
        init_images=init,
        start_step=int(request.start_step),
        num_steps=int(request.num_steps),
        seed=seed,
        input_elevation_deg=0.0,  # the request's elevations are relative to the input view
        desc="refine",
    )
    refined = resize_square(images.astype(np.float32) / 255.0, h)
    out[views] = on_background(refined, request.alpha[views], bg)
    return out


_LOADED: dict[str, Any] = {}  # one loaded sampler per process: `fit4d.run` asks for it once per sample


def sampler_refiner(cfg: PipelineConfig) -> Refiner:
    """The novel-view sampler as a Refiner (`fit4d.refiner: sampler`): network and encoders from the `sample`
    section (our checkpoint or an official sv4d2.safetensors), loaded once per process and settings; seed
    `sample.seed`. A missing checkpoint or encoder file raises here, naming the setting."""
    from model.novel_views import NovelViewSampler

    key = repr((cfg.out_dir, cfg.sample, cfg.encode, cfg.model))
    sampler = _LOADED.get(key)
    if sampler is None:
        _LOADED.clear()  # other settings: let the previous network go before loading the next
        sampler = _LOADED[key] = NovelViewSampler(cfg)

    def refine(request: RefineRequest) -> np.ndarray:
        return refine_with(sampler, request, seed=cfg.sample.seed)

    refine.__name__ = "sampler"
    return refine
