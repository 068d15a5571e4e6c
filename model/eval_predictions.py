"""Sampled views at the ground truth's cameras, in the layout `python -m evaluation.run` reads.

For a render-sample input (``shard.tar#KEY``) the evaluation compares predictions with the images of one
orbit of the same sample (`evaluation.orbit`, views `evaluation.views`, frames `evaluation.frames`). The
paper evaluates novel-view synthesis at held-out ground-truth cameras, so `model.sample` samples once more
at exactly those cameras, given as the network sees cameras: relative to the input camera
(`relative_cameras`: target azimuth minus the input's, the targets' own elevations, the input's true
elevation). Each sampled image is in the input crop's framing (model/crop.py), so `uncrop` maps it back
through the same box into the shard's full frame and resolution, white outside the box, and writes

    <sample.predictions>/<uid>/v{VV}.f{FF}.png   8-bit RGB on white, the ground truth's size
    <sample.predictions>/<uid>/prediction.json   how it was made: orbit, views, frames, the input view,
                                                 the frames the sampler did not produce, the crop boxes

Frame f of the evaluated orbit is the sampled frame whose source position is f (the input video is the
same sample's frames, `sample.frame_stride` / `sample.num_frames` may drop some). Evaluated frames the
sampler did not produce are left out and listed in `missing_frames`; the evaluation then evaluates the
frames that exist (evaluation/inputs.py). When the input video is a view of the evaluated orbit itself,
that view is conditioned on, not held out: it is listed in `training_views` (the table says so).
The folder is written under `<uid>.partial` and renamed, so a folder under its final name is complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.novel_cameras import CameraSet
from shards.render_schema import select_indices

log = logging.getLogger(__name__)

#: The evaluation's names (evaluation/inputs.py PREDICTION_NAME, PREDICTION_INFO; model/ may not import it).
PREDICTION_NAME = "v{view:02d}.f{frame:02d}.png"
INFO_NAME = "prediction.json"


@dataclass
class EvalTargets:
    """The evaluated cameras of one render sample: angles (len(views), 3) [elevation_deg, azimuth_deg,
    radius] of `orbit`, the image side, the sample's frame count."""

    key: str
    orbit: str
    views: list[int]
    frames: list[int]
    angles: np.ndarray
    resolution: int
    num_frames: int


def read_targets(
    shard: str | Path, key: str, orbit: str, views: Sequence[int] = (), frames: Sequence[int] = ()
) -> EvalTargets:
    """The evaluated cameras of sample `key` of a render shard (no image is decoded)."""
    from shards.reader import iter_raw_samples
    from shards.render_schema import decode_render_sample

    for raw in iter_raw_samples(shard):
        if raw.get("__key__") != key:
            continue
        sample = decode_render_sample(raw, decode_images=False)
        if orbit not in sample.angles:
            raise ValueError(
                f"{key}: no cameras of the evaluated orbit {orbit!r} (has {sample.meta['orbits']})"
            )
        meta = sample.meta
        v = select_indices(views, int(meta["num_views"]), "evaluation.views")
        f = select_indices(frames, int(meta["num_frames"]), "evaluation.frames")
        return EvalTargets(
            key,
            orbit,
            v,
            f,
            np.asarray(sample.angles[orbit], np.float64)[v],
            int(meta["resolution"]),
            int(meta["num_frames"]),
        )
    raise ValueError(f"{shard}: no sample {key!r}")


def relative_cameras(angles: np.ndarray, input_angles: Sequence[float]) -> tuple[CameraSet, float]:
    """Target cameras (N, 3) [elevation_deg, azimuth_deg, radius] and the input camera's (3,), all in the
    shard's frame -> (the targets as the network is conditioned: azimuth relative to the input's in
    [0, 360), their own elevations; the input's elevation).

    Example: input at (10, 100), targets at (10, 40) and (20, 190) -> azimuths 300 and 90, elevations 10
    and 20, input elevation 10.
    """
    angles = np.asarray(angles, np.float64).reshape(-1, 3)
    az = (angles[:, 1] - float(input_angles[1])) % 360.0
    cams = CameraSet(tuple(float(e) for e in angles[:, 0]), tuple(float(a) for a in az))
    return cams, float(input_angles[0])


def uncrop(image: np.ndarray, box: Sequence[float], height: int, width: int) -> np.ndarray:
    """The inverse of model/crop.py `crop_resize`: a model-resolution image (R, R, 3|4) showing the
    source region `box` [x0, y0, x1, y1] (continuous source pixels) -> uint8 (height, width, 3) of the
    source frame, Lanczos-resampled, white where the box does not reach (RGBA is composited on white).

    A box of side R at integer offsets is a pure shift: the pixels inside it come back exactly.
    """
    from PIL import Image

    img = np.asarray(image, np.float32)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] != img.shape[1]:
        raise ValueError(f"uncrop needs a square (R, R, 3|4) image, got {img.shape}")
    if img.shape[2] == 4:
        a = img[..., 3:4] / 255.0
        img = img[..., :3] * a + 255.0 * (1.0 - a)
    r = img.shape[0]
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box {list(box)} is empty")
    sx, sy = r / (x1 - x0), r / (y1 - y0)
    # the whole target frame [0, width] x [0, height] in model pixels; pad the model image with white so
    # the resampling reads white (not a clamped edge) wherever the frame reaches outside the box
    bx0, by0, bx1, by1 = -x0 * sx, -y0 * sy, (width - x0) * sx, (height - y0) * sy
    pad = int(np.ceil(max(0.0, -bx0, -by0, bx1 - r, by1 - r))) + 4
    padded = np.full((r + 2 * pad, r + 2 * pad, 3), 255.0, np.float32)
    padded[pad : pad + r, pad : pad + r] = img
    src = (bx0 + pad, by0 + pad, bx1 + pad, by1 + pad)
    channels = [
        np.asarray(Image.fromarray(padded[..., c], "F").resize((width, height), Image.LANCZOS, box=src))
        for c in range(3)
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def frame_map(positions: Sequence[float], frames: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Evaluated `frames` -> (the frames the sampler produced, their indices among the sampled frames,
    the frames it did not produce). A sampled frame is source frame f when its position is f (a frame
    filled in by interpolation, at a fractional position, is none); the first such sampled frame wins."""
    pos = np.asarray(positions, np.float64)
    have, index, missing = [], [], []
    for f in frames:
        hit = np.flatnonzero(np.abs(pos - f) < 1e-6)
        if hit.size:
            have.append(int(f))
            index.append(int(hit[0]))
        else:
            missing.append(int(f))
    return have, index, missing


def write_predictions(
    folder: str | Path, images: np.ndarray, views: Sequence[int], frames: Sequence[int], info: dict[str, Any]
) -> Path:
    """uint8 (V, F, H, W, 3) -> `folder/vVV.fFF.png` + `prediction.json`, replacing an older folder whole."""
    from PIL import Image

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, v in enumerate(views):
        for j, f in enumerate(frames):
            Image.fromarray(np.ascontiguousarray(images[i, j])).save(
                tmp / PREDICTION_NAME.format(view=v, frame=f)
            )
    (tmp / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def predictions_dir(cfg: Any) -> Path:
    """`sample.predictions` (relative: under out_dir, as evaluation.systems resolves its folders)."""
    p = Path(cfg.sample.predictions).expanduser()
    return p if p.is_absolute() else Path(cfg.out_dir).expanduser() / p


def sample_predictions(sampler: Any, prep: Any) -> dict[str, Any] | None:
    """Sample `prep` (model/novel_views.py PreparedInput of a render-sample input) at the evaluated
    cameras of the same sample and write them under `sample.predictions`; returns the provenance record,
    or None where nothing applies (the knob is off, the input is not a render sample)."""
    cfg = sampler.cfg
    s, ec = cfg.sample, cfg.evaluation
    if not s.predictions or prep.info.get("kind") != "render":
        return None
    shard, _, key = str(prep.info["source"]).partition("#")
    targets = read_targets(shard, key, ec.orbit, ec.views, ec.frames)
    input_angles = np.asarray(prep.info["gt_angles"], np.float64)[int(prep.info["view"])]
    cams, input_el = relative_cameras(targets.angles, input_angles)
    have, index, missing = frame_map(prep.positions, targets.frames)
    if not have:
        raise ValueError(f"{key}: the sampler produced none of the evaluated frames {targets.frames}")
    if missing:
        log.warning("%s: the sampler did not produce evaluated frames %s: evaluating %s", key, missing, have)
    images = sampler.generate(prep.rgba, cams, input_elevation_deg=input_el, desc=f"eval views {key}")
    side = targets.resolution
    out = np.stack(
        [np.stack([uncrop(images[i, j], prep.boxes[j], side, side) for j in index]) for i in range(len(cams))]
    )
    conditioned = [v for v in targets.views if ec.orbit == prep.info["orbit"] and v == int(prep.info["view"])]
    info = {
        "uid": key,
        "system": "sample",
        "orbit": targets.orbit,
        "views": targets.views,
        "frames": have,
        "missing_frames": missing,
        "resolution": [side, side],
        "input": {"orbit": prep.info["orbit"], "view": int(prep.info["view"]), "source": prep.info["source"]},
        "input_elevation_deg": input_el,
        "cameras": [[e, a] for e, a in zip(cams.elevation_deg, cams.azimuth_deg)],
        "training_views": conditioned,  # the input video's camera: conditioned on, not held out
        "crop_mode": s.crop,
        "crop_boxes": np.asarray(prep.boxes)[index].round(3).tolist(),
        "sample_resolution": s.resolution,
        "num_steps": s.num_steps,
        "seed": s.seed,
    }
    folder = write_predictions(predictions_dir(cfg) / key, out, targets.views, have, info)
    log.info("%s: sampled views at the %s orbit's %d cameras in %s", key, ec.orbit, len(cams), folder)
    return info
