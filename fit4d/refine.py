"""Stage 2's new targets: the stage-1 renders, noised to step `refine_step` of the `refine_num_steps`-step
schedule and denoised by the novel-view sampler (paper sec. 4, supplement 7.3).

The loop only needs a `Refiner`: a callable from a `RefineRequest` (all views and frames rendered from the
stage-1 NeRF) to refined images of the same views and frames. `sampler_refiner` is the adapter to the
sampler's start-from-image mode, which model/ does not have yet; tests use stand-in callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from profiles.schema import PipelineConfig


@dataclass
class RefineRequest:
    """rgb (V, F, H, W, 3) float32 renders in [0, 1] on a `background` grey; alpha (V, F, H, W) rendered
    opacity; c2w (V, 4, 4) OpenCV cameras; K (3, 3); elevation/azimuth (V,) degrees relative to the input
    view's; input_rgb (F, H, W, 3) the original input-view video (the sampler's conditioning)."""

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


def sampler_refiner(cfg: PipelineConfig) -> Refiner:
    """The novel-view sampler as a Refiner (`fit4d.refiner: sampler`).

    To fill when model/sample.py has its start-from-image mode: encode `request.rgb` (composited on white,
    [-1, 1]) with the VAE into scaled latents (B=1, F, V, 4, H/8, W/8), noise them to sigma of step
    `start_step` of the `num_steps`-step EDM schedule, run the Euler sampler from there conditioned on
    `request.input_rgb` (VAE latents + CLIP of the input video) with polar/azimuth from
    `request.elevation_deg`/`azimuth_deg`, decode, and return (V, F, H, W, 3) in [0, 1].
    """
    raise NotImplementedError(
        "fit4d.refiner=sampler needs the novel-view sampler's start-from-image mode (model/sample.py), which "
        "does not exist yet: use fit4d.refiner=none (stage 2 then refits the stage-1 targets)"
    )
