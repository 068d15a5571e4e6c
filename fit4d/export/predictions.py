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

from shards.render_schema import RenderSample

#: The evaluation's file name (evaluation/inputs.py PREDICTION_NAME; fit4d may not import evaluation).
PREDICTION_NAME = "v{view:02d}.f{frame:02d}.png"
INFO_NAME = "prediction.json"

RenderFn = Callable[[np.ndarray, float, int, int, np.ndarray], tuple[torch.Tensor, torch.Tensor]]
"""(c2w (4, 4), t, height, width, K (3, 3)) -> (rgb (H, W, 3) on the fit's background, opacity (H, W))."""


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


def select_indices(indices: Sequence[int], count: int, what: str) -> list[int]:
    """`indices` (empty: all of range(count)), checked to lie in range and not repeat."""
    chosen = [int(i) for i in indices] if indices else list(range(count))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise ValueError(f"{what} {bad} out of range: the orbit has {count}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{what} {chosen} repeat an index")
    return chosen


def prediction_cameras(
    sample: RenderSample, orbit: str, views: Sequence[int] = (), frames: Sequence[int] = ()
) -> PredictionCameras:
    """The cameras, intrinsics and image size of the evaluated views and frames of `sample`'s `orbit`."""
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


def on_white(rgb: torch.Tensor, opacity: torch.Tensor, background: float) -> torch.Tensor:
    """A render composited on `background` -> the same on white: rgb + (1 - opacity)(1 - background)."""
    return rgb + (1.0 - opacity)[..., None] * (1.0 - background)


def render_predictions(
    render_fn: RenderFn,
    cams: PredictionCameras,
    fit_num_frames: int,
    background: float,
    progress: bool = False,
) -> np.ndarray:
    """uint8 (V, F, H, W, 3) on white: each evaluated view x frame at fit time frame / (F - 1)."""
    if fit_num_frames != cams.num_frames:
        raise ValueError(
            f"{cams.key}: the fit has {fit_num_frames} frames, the evaluated orbit {cams.orbit!r} has "
            f"{cams.num_frames}: frames would not line up"
        )
    out = np.empty((len(cams.views), len(cams.frames), cams.height, cams.width, 3), np.uint8)
    pairs = [(i, j) for i in range(len(cams.views)) for j in range(len(cams.frames))]
    for i, j in tqdm(pairs, desc=f"fit4d predictions {cams.key}", disable=not progress, leave=False):
        t = cams.frames[j] / max(cams.num_frames - 1, 1)
        rgb, opacity = render_fn(cams.c2w[i], t, cams.height, cams.width, cams.K)
        white = on_white(rgb, opacity, background)
        out[i, j] = (white.clamp(0, 1) * 255).round().byte().cpu().numpy()
    return out


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


def fitter_render_fn(fitter: Any) -> RenderFn:
    """A RenderFn over a fitted `fit4d.loop.Fitter` (its NeRF, occupancy grid and render settings)."""

    def render(c2w: np.ndarray, t: float, height: int, width: int, K: np.ndarray):
        dev = fitter.device
        r = fitter.render_image(
            torch.from_numpy(np.asarray(c2w)).float().to(dev),
            t,
            height,
            width,
            torch.from_numpy(np.asarray(K)).float().to(dev),
        )
        return r["rgb"], r["opacity"]

    return render


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
    images = render_predictions(
        fitter_render_fn(fitter), cams, fitter.num_frames, cfg.render.background, cfg.progress
    )
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
