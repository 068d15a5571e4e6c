"""The fitted 4D asset rendered at the ground-truth cameras, in the layout `python -m evaluation.run` reads.

For the render sample a fit came from, every (view, frame) of `evaluation.orbit` that the evaluation asks for
(`evaluation.views` / `evaluation.frames`, empty: all) is rendered with the shard's own camera-to-world and
intrinsics at the shard's resolution, composited on white, and written as

    <predictions>/<uid>/v{VV}.f{FF}.png     8-bit RGB, the ground truth's size (evaluation/inputs.py)
    <predictions>/<uid>/prediction.json     provenance: orbit, views, frames, and which evaluated views the
                                            fit trained on (`training_views`: they are not held out)

Ground-truth frame f of the orbit is fit time f / (F - 1), the time the fit gave frame f of its own orbit
(both orbits of a render sample show the same frames). The folder is written whole under `<uid>.partial` and
renamed, so a folder under its final name is complete.

Cost: these renders are RGB on white only (no normals, no depth), several images' rays per batch, white
without a field call where a ray misses the box or every occupied cell, each ray marched in segments and
dropped once nothing behind can show (`render_on_white`), and on the CPU field calls of 4096 points (the
hash grid's gathers stay in cache: 2-3x the points per second of 2^16-point calls on 2 cores). The demo's
6 x 6 images at 96 px: 78 s with one `Fitter.render_image` per image, 22 s here, same fit, idle machine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shards.render_schema import RenderSample, select_indices

#: The evaluation's file name (evaluation/inputs.py PREDICTION_NAME; fit4d may not import evaluation).
PREDICTION_NAME = "v{view:02d}.f{frame:02d}.png"
INFO_NAME = "prediction.json"


@dataclass
class PredictionCameras:
    """The evaluated cameras of one render sample: c2w (len(views), 4, 4) of `orbit`, K (3, 3) in pixels of
    the height x width ground-truth images, and the sample's frame count."""

    key: str
    orbit: str
    views: list[int]
    frames: list[int]
    c2w: np.ndarray
    K: np.ndarray
    height: int
    width: int
    num_frames: int


def prediction_cameras(
    sample: RenderSample, orbit: str, views: Sequence[int] = (), frames: Sequence[int] = ()
) -> PredictionCameras:
    """The cameras, intrinsics and image size of the evaluated views and frames of `sample`'s `orbit`."""
    if not isinstance(sample, RenderSample):  # model.sample's generated views: no ground-truth orbit
        raise ValueError(f"{sample.key}: not a render sample, so no ground-truth cameras to render at")
    if orbit not in sample.c2w:
        raise ValueError(f"{sample.key}: no cameras of the evaluated orbit {orbit!r} (has {sample.orbits})")
    meta = sample.meta
    c2w = np.asarray(sample.c2w[orbit], np.float32)
    num_views = int(meta.get("num_views", c2w.shape[0]))
    num_frames = int(meta["num_frames"])
    side = int(meta["resolution"])
    v = select_indices(views, num_views, "evaluation.views")
    f = select_indices(frames, num_frames, "evaluation.frames")
    return PredictionCameras(
        key=sample.key,
        orbit=orbit,
        views=v,
        frames=f,
        c2w=c2w[v],
        K=np.asarray(sample.intrinsics, np.float32),
        height=side,
        width=side,
        num_frames=num_frames,
    )


def training_views(cams: PredictionCameras, fit_orbit: str, fit_train_views: Sequence[int]) -> list[int]:
    """Evaluated views (orbit indices) whose cameras the fit trained on: none when it fitted another orbit."""
    if cams.orbit != fit_orbit:
        return []
    trained = {int(v) for v in fit_train_views}
    return [v for v in cams.views if v in trained]


def write_predictions(
    folder: str | Path, images: np.ndarray, cams: PredictionCameras, info: dict[str, Any]
) -> Path:
    """uint8 (V, F, H, W, 3) -> `folder/vVV.fFF.png` + `prediction.json`, replacing an older folder whole."""
    from PIL import Image

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, v in enumerate(cams.views):
        for j, f in enumerate(cams.frames):
            Image.fromarray(np.ascontiguousarray(images[i, j])).save(
                tmp / PREDICTION_NAME.format(view=v, frame=f)
            )
    record = {
        "uid": cams.key,
        "orbit": cams.orbit,
        "views": cams.views,
        "frames": cams.frames,
        "resolution": [cams.height, cams.width],
        **info,
    }
    (tmp / INFO_NAME).write_text(json.dumps(record, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


@torch.no_grad()
def render_on_white(
    field_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    origins: torch.Tensor,
    dirs: torch.Tensor,
    times: torch.Tensor,
    bound: float,
    num_samples: int,
    occupied: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    segment: int = 8,
    min_transmittance: float = 1e-4,
    max_points: int = 2**17,
) -> torch.Tensor:
    """RGB (R, 3) on white of rays (R, 3) at times (R,): the samples and weights of fit4d/rendering.py
    `render_rays` (bin centres, no perturbation), for evaluation renders only (no gradients, no normals).

    Cheaper on three counts, none of which changes a visible value: rays that miss the box or every
    occupied cell are white without a field call; a ray is marched `segment` samples at a time and dropped
    once its transmittance falls below `min_transmittance` (what it would still add is below that, far
    under one 8-bit level); the field runs on at most `max_points` points per call, over all cameras and
    times at once. Equal to `render_rays(..., background=1)` up to `min_transmittance`.
    """
    from fit4d.rendering import ray_aabb, stratified_samples, transmittance

    n = origins.shape[0]
    dev, dtype = origins.device, origins.dtype
    out = torch.zeros(n, 3, device=dev, dtype=dtype)
    trans = torch.ones(n, device=dev, dtype=dtype)
    t_near, t_far, hit = ray_aabb(origins, dirs, bound)
    active = hit.nonzero()[:, 0]
    # render_rays' depths (bin centres of all num_samples bins), computed once; each segment reads its bins
    t_all, width = stratified_samples(t_near, t_far, num_samples, False)
    for s0 in range(0, num_samples, segment):
        if active.numel() == 0:
            break
        s1 = min(s0 + segment, num_samples)
        t = t_all[active, s0:s1]
        deltas = width[active, s0:s1]
        pts = origins[active, None, :] + dirs[active, None, :] * t[..., None]
        keep = torch.ones(t.shape, dtype=torch.bool, device=dev)
        if occupied is not None:
            keep = occupied(pts.reshape(-1, 3)).reshape(t.shape)
        flat = keep.reshape(-1).nonzero()[:, 0]
        sigma = torch.zeros(t.numel(), device=dev, dtype=dtype)
        rgb = torch.zeros(t.numel(), 3, device=dev, dtype=dtype)
        if flat.numel():
            x = pts.reshape(-1, 3)[flat]
            tt = times[active, None].expand_as(t).reshape(-1)[flat][:, None]
            for c0 in range(0, flat.numel(), max_points):
                sl = slice(c0, c0 + max_points)
                sg, cl = field_fn(x[sl], tt[sl])
                sigma[flat[sl]] = sg.to(dtype)
                rgb[flat[sl]] = cl.to(dtype)
        tau = sigma.reshape(t.shape) * deltas
        # transmittance before each sample: the ray's so far times exp(-optical depth) within the segment
        before = transmittance(tau)
        weights = trans[active, None] * before * (1.0 - torch.exp(-tau))
        out[active] += (weights[..., None] * rgb.reshape(*t.shape, 3)).sum(1)
        trans[active] = trans[active] * torch.exp(-tau.sum(1))
        active = active[trans[active] >= min_transmittance]
    return out + trans[:, None]  # what passes through every sample sees the white background


def render_predictions(fitter: Any, cams: PredictionCameras, progress: bool = False) -> np.ndarray:
    """uint8 (V, F, H, W, 3) on white of a fitted `fit4d.loop.Fitter` at every evaluated view x frame
    (fit time frame / (F - 1)), the rays of several images per batch (`render_on_white`)."""
    from fit4d.cameras import image_rays

    if fitter.num_frames != cams.num_frames:
        raise ValueError(
            f"{cams.key}: the fit has {fitter.num_frames} frames, the evaluated orbit {cams.orbit!r} has "
            f"{cams.num_frames}: frames would not line up"
        )
    cfg, dev = fitter.cfg, fitter.device
    h, w = cams.height, cams.width
    K = torch.from_numpy(np.asarray(cams.K)).float().to(dev)
    pairs = [(i, j) for i in range(len(cams.views)) for j in range(len(cams.frames))]
    per_batch = max(1, 2**16 // (h * w))  # images per batch: enough rays to amortize the per-call cost
    out = np.empty((len(cams.views), len(cams.frames), h, w, 3), np.uint8)
    rays = {}
    for b0 in tqdm(
        range(0, len(pairs), per_batch),
        desc=f"fit4d predictions {cams.key}",
        disable=not progress,
        leave=False,
    ):
        batch = pairs[b0 : b0 + per_batch]
        o, d, t = [], [], []
        for i, j in batch:
            if i not in rays:
                rays[i] = image_rays(torch.from_numpy(np.asarray(cams.c2w[i])).float().to(dev), K, h, w)
            o.append(rays[i][0])
            d.append(rays[i][1])
            t.append(torch.full((h * w,), cams.frames[j] / max(cams.num_frames - 1, 1), device=dev))
        rgb = render_on_white(
            fitter.field_fn,
            torch.cat(o),
            torch.cat(d),
            torch.cat(t),
            cfg.nerf.bound,
            cfg.render.num_samples,
            fitter.occupancy,
            max_points=2**19 if dev.type == "cuda" else 2**12,
        )
        images = (rgb.clamp(0, 1) * 255).round().byte().reshape(len(batch), h, w, 3).cpu().numpy()
        for k, (i, j) in enumerate(batch):
            out[i, j] = images[k]
    return out


@torch.no_grad()
def export_predictions(
    fitter: Any,
    sample: RenderSample,
    folder: str | Path,
    orbit: str,
    views: Sequence[int] = (),
    frames: Sequence[int] = (),
) -> dict[str, Any]:
    """Render a finished fit at `sample`'s evaluated cameras into `folder` (the `<uid>` folder); returns
    the provenance record written beside the images."""
    cfg = fitter.cfg
    cams = prediction_cameras(sample, orbit, views, frames)
    fitter.model.dynamic = fitter.num_frames > 1
    images = render_predictions(fitter, cams, cfg.progress)
    info = {
        "system": "fit4d",
        "fit_orbit": cfg.orbit,
        "fit_resolution": [fitter.height, fitter.width],
        "input_view": int(fitter.data.input_view),
        "training_views": training_views(cams, cfg.orbit, fitter.train_views.tolist()),
        "training_frames": cams.frames,  # a fit trains on every frame
    }
    write_predictions(folder, images, cams, info)
    return info
