"""What the evaluation reads: ground truth from render shards, predictions from a folder per system.

Ground truth. Render samples (`shards/render_schema.py`) of the shards matched by `evaluation.ground_truth`;
per object the images of one orbit (`evaluation.orbit`) at the held-out views and frames
(`evaluation.views` / `evaluation.frames`, indices into that orbit; empty lists: all of them), as a
views x frames matrix of RGBA images.

Prediction layout (what `model.sample` and `fit4d` write for evaluation; one folder per system):

    <predictions>/<uid>/v{VV}.f{FF}.png

- ``<uid>``: the render sample's key (the asset uid).
- ``VV``, ``FF``: the view and frame index of the ground-truth image this one predicts, in the evaluated
  orbit of the render shard, zero-padded to at least two digits (as the shard's own ``{orbit}.vVV.fFF.png``).
  So a prediction is at the same camera and time as the ground truth it is compared with; views or frames
  that the system was conditioned on (the input video) are simply left out of `evaluation.views/frames`.
- 8-bit PNG, RGB or RGBA (straight alpha; composited on white like the ground truth), the ground truth's
  resolution. Every evaluated (view, frame) must exist; extra files are ignored.
- Optional ``<uid>/prediction.json`` (fit4d and model.sample write one): its ``training_views`` lists the
  evaluated views whose cameras the system was fitted to or conditioned on. They are not held out; the
  runner records them per object and in the totals, and the table's row says so. Its ``missing_frames``
  lists evaluated frames the system did not produce (a sampler given fewer frames): that object is
  evaluated on the other frames, and its record says which were left out.

A missing or unreadable file, or a size mismatch, raises `PredictionError` naming the file; the runner
records it as a failed object and goes on.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.reader import iter_raw_samples
from shards.render_schema import SchemaError, decode_render_sample, image_field, png_load, select_indices

log = logging.getLogger(__name__)

PREDICTION_NAME = "v{view:02d}.f{frame:02d}.png"
PREDICTION_INFO = "prediction.json"
PREDICTION_RE = re.compile(r"^v(\d{2,})\.f(\d{2,})\.png$")


class PredictionError(ValueError):
    """A prediction folder breaks the layout; the message names the file."""


@dataclass
class GroundTruth:
    """One object's held-out images: rgba uint8 (V, F, H, W, 4) at orbit views `views` and frames `frames`."""

    uid: str
    rgba: np.ndarray
    views: list[int]
    frames: list[int]
    orbit: str
    source: str = ""
    """The shard it was read from."""


@dataclass
class Failure:
    """An object that could not be read; `reason` is one line."""

    uid: str
    reason: str
    source: str


def prediction_name(view: int, frame: int) -> str:
    return PREDICTION_NAME.format(view=view, frame=frame)


def _map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """`fn` over `items` in threads, in order (PNG decoding releases the GIL); the first error propagates."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def shard_paths(patterns: Sequence[str], root: str | Path) -> list[Path]:
    """Shards matched by glob patterns (relative ones under `root`), sorted, without duplicates."""
    found: set[Path] = set()
    for pattern in patterns:
        p = Path(pattern).expanduser()
        full = p if p.is_absolute() else Path(root) / p
        found |= {Path(m) for m in glob.glob(str(full))}
    return sorted(found)


def iter_ground_truth(
    shards: Sequence[str | Path], orbit: str, views: Sequence[int] = (), frames: Sequence[int] = ()
) -> Iterator[GroundTruth | Failure]:
    """Every object of the shards, in order: its GroundTruth, or a Failure (corrupt sample, no such orbit,
    indices out of range). A corrupt shard yields one Failure for what it could not read."""
    for shard in shards:
        try:
            for raw in iter_raw_samples(shard):
                uid = str(raw.get("__key__"))
                try:
                    # the contract is checked on the whole sample, but only the held-out images are decoded
                    # (168 of the 1,152 PNGs of a paper-scale sample)
                    sample = decode_render_sample(raw, decode_images=False)
                    meta = sample.meta
                    if orbit not in meta["orbits"]:
                        raise SchemaError(f"no {orbit!r} orbit (has {meta['orbits']})")
                    v_idx = select_indices(views, int(meta["num_views"]), "evaluation.views")
                    f_idx = select_indices(frames, int(meta["num_frames"]), "evaluation.frames")
                    res = int(meta["resolution"])
                    names = [image_field(orbit, v, f) for v in v_idx for f in f_idx]
                    images = _map(lambda n, r=raw: png_load(r[n], n), names)
                    bad = next((n for n, im in zip(names, images) if im.shape != (res, res, 4)), None)
                    if bad is not None:
                        raise SchemaError(f"{bad}: not {res}x{res} RGBA")
                    rgba = np.stack(images).reshape(len(v_idx), len(f_idx), res, res, 4)
                    yield GroundTruth(
                        uid=uid, rgba=rgba, views=v_idx, frames=f_idx, orbit=orbit, source=str(shard)
                    )
                except SchemaError as exc:
                    yield Failure(uid=uid, reason=f"ground truth: {exc}", source=str(shard))
        except SchemaError as exc:
            yield Failure(uid=f"<{Path(shard).name}>", reason=f"ground truth shard: {exc}", source=str(shard))


def _read_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise PredictionError(f"missing prediction {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im).copy()
    except Exception as exc:  # PIL raises many types for a corrupt file
        raise PredictionError(f"unreadable prediction {path}: {exc}") from exc
    if arr.shape[:2] != tuple(size):
        raise PredictionError(
            f"{path}: {arr.shape[1]}x{arr.shape[0]} pixels, the ground truth has {size[1]}x{size[0]}"
        )
    return arr


def read_prediction(
    folder: str | Path, views: Sequence[int], frames: Sequence[int], size: tuple[int, int]
) -> np.ndarray:
    """uint8 (V, F, H, W, C) of ``folder/vVV.fFF.png`` for every view x frame; C = 4 if any file is RGBA
    (RGB files then get alpha 255), else 3. Raises PredictionError naming the first bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictionError(f"no prediction folder {folder}")
    images = _map(
        lambda vf: _read_png(folder / prediction_name(*vf), size), [(v, f) for v in views for f in frames]
    )
    channels = 4 if any(a.shape[2] == 4 for a in images) else 3
    out = np.full((len(images), size[0], size[1], channels), 255, np.uint8)
    for i, a in enumerate(images):
        out[i, ..., : a.shape[2]] = a
    return out.reshape(len(views), len(frames), size[0], size[1], channels)


def read_prediction_views(folder: str | Path, views: Sequence[int]) -> list[int] | None:
    """The evaluated `views` listed as training views by ``folder/prediction.json``; None without a
    readable one (nothing is known, e.g. sampled views or a stand-in)."""
    import json

    path = Path(folder) / PREDICTION_INFO
    try:
        trained = json.loads(path.read_text()).get("training_views")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(trained, list):
        return None
    return [v for v in views if v in trained]


def read_prediction_frames(folder: str | Path, frames: Sequence[int]) -> list[int] | None:
    """The evaluated `frames` that ``folder/prediction.json`` says exist, when it lists ``missing_frames``
    (a sampler that produced fewer frames than evaluated: model/eval_predictions.py); None otherwise
    (every evaluated frame must exist)."""
    import json

    try:
        missing = json.loads((Path(folder) / PREDICTION_INFO).read_text()).get("missing_frames")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(missing, list) or not missing:
        return None
    return [f for f in frames if f not in missing]


def write_prediction(
    folder: str | Path, images: np.ndarray, views: Sequence[int], frames: Sequence[int]
) -> None:
    """Write uint8 (V, F, H, W, 3|4) in the prediction layout (for producers of predictions and tests)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(views):
        for j, f in enumerate(frames):
            Image.fromarray(np.ascontiguousarray(images[i, j])).save(folder / prediction_name(v, f))


def degraded_copy(rgba: np.ndarray, noise_std: float, seed: int) -> np.ndarray:
    """A stand-in prediction: the ground truth composited on white plus Gaussian noise (uint8 RGB).
    For the demo before real predictions exist; a known noise level gives a known PSNR."""
    rgb = rgba[..., :3].astype(np.float64) / 255.0
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    white = rgb * alpha + (1.0 - alpha)
    noisy = white + np.random.default_rng(seed).normal(0.0, noise_std, white.shape)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def describe(obj: GroundTruth | Failure) -> dict[str, Any]:
    if isinstance(obj, Failure):
        return {"uid": obj.uid, "status": "failed", "reason": obj.reason}
    return {"uid": obj.uid, "orbit": obj.orbit, "views": obj.views, "frames": obj.frames}
