"""Reading the input of novel-view sampling: a video file, a folder of frames, or a render-shard sample.

Every reader returns uint8 frames (N, H, W, 3|4) and an info dict (what was read, fps, source frames).
Video files go through imageio with its ffmpeg plugin (mp4, webm, mov, mkv, avi) or its Pillow plugin
(gif, and single images). A render sample (``shard.tar`` or ``shard.tar#KEY``) gives one view of one orbit
as RGBA with its ground-truth cameras (the evaluation compares against the other views).
Unreadable files, frames of different sizes and empty inputs are ValueErrors that name the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _as_uint8_frame(frame: Any, name: str) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: frame of shape {a.shape} is not RGB or RGBA")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.rint(a * 255.0), 0, 255)
        a = a.astype(np.uint8)
    return a


def _stack(frames: list[np.ndarray], names: list[str]) -> np.ndarray:
    if not frames:
        raise ValueError(f"{names[0] if names else 'input'}: no frames")
    first = frames[0].shape
    for f, n in zip(frames, names):
        if f.shape[:2] != first[:2]:
            raise ValueError(f"{n}: frame size {f.shape[1]}x{f.shape[0]} differs from {first[1]}x{first[0]}")
    if any(f.shape[-1] == 4 for f in frames):  # mixed RGB/RGBA: RGB frames become opaque RGBA
        frames = [
            f if f.shape[-1] == 4 else np.concatenate([f, np.full_like(f[..., :1], 255)], -1) for f in frames
        ]
    return np.stack(frames)


def read_video(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A video file or a single image -> (frames, info)."""
    import imageio.v2 as imageio

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"input not found: {path}")
    ext = path.suffix.lower()
    fps = 0.0
    try:
        if ext in VIDEO_EXTS:
            with imageio.get_reader(str(path), format="FFMPEG") as reader:
                fps = float(reader.get_meta_data().get("fps", 0.0))
                frames = [_as_uint8_frame(f, str(path)) for f in reader]
        elif ext == ".gif":
            frames = [_as_uint8_frame(f, str(path)) for f in imageio.mimread(str(path), memtest=False)]
        elif ext in IMAGE_EXTS:
            frames = [_as_uint8_frame(imageio.imread(str(path)), str(path))]
        else:
            raise ValueError(f"unsupported input type {ext!r} (videos: {VIDEO_EXTS}, .gif, images)")
    except ValueError:
        raise
    except Exception as exc:  # imageio/ffmpeg raise many types for corrupt files
        raise ValueError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    stack = _stack(frames, [f"{path} frame {i}" for i in range(len(frames))])
    return stack, {"source": str(path), "kind": "video" if ext != ".gif" else "gif", "fps": fps}


def read_frame_folder(
    path: str | Path, masks_dir: str | Path | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A folder of images, in sorted name order -> (frames, info)."""
    import imageio.v2 as imageio

    path = Path(path).expanduser()
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"{path}: no image files ({', '.join(IMAGE_EXTS)})")
    frames = []
    for f in files:
        try:
            frames.append(_as_uint8_frame(imageio.imread(str(f)), str(f)))
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"cannot read frame {f}: {type(exc).__name__}: {exc}") from exc
    return _stack(frames, [str(f) for f in files]), {"source": str(path), "kind": "folder", "fps": 0.0}


def read_masks(path: str | Path, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """User masks: a folder of images (sorted, one per frame) or a video, white = object -> bool (N, H, W)."""
    path = Path(path).expanduser()
    frames, _ = read_frame_folder(path) if path.is_dir() else read_video(path)
    if len(frames) != num_frames or frames.shape[1:3] != size:
        raise ValueError(
            f"masks {path}: {len(frames)} of {frames.shape[2]}x{frames.shape[1]}, "
            f"expected {num_frames} of {size[1]}x{size[0]}"
        )
    return frames[..., :3].max(axis=-1) > 127


def read_render_input(
    path: str | Path, key: str = "", orbit: str = "dynamic", view: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """One view of a render-shard sample: RGBA frames (F, R, R, 4) and info with its ground truth."""
    from shards.reader import iter_raw_samples
    from shards.render_schema import decode_render_sample

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"render shard not found: {path}")
    for raw in iter_raw_samples(path):
        if key and raw["__key__"] != key:
            continue
        sample = decode_render_sample(raw)
        if orbit not in sample.images:
            raise ValueError(f"{path}#{sample.key}: no orbit {orbit!r} (has {sample.orbits})")
        images = sample.images[orbit]
        if not 0 <= view < images.shape[0]:
            raise ValueError(f"{path}#{sample.key}: view {view} out of range 0..{images.shape[0] - 1}")
        info = {
            "source": f"{path}#{sample.key}",
            "kind": "render",
            "fps": 0.0,
            "key": sample.key,
            "orbit": orbit,
            "view": view,
            "gt_angles": sample.angles[orbit].tolist(),
            "gt_c2w": sample.c2w[orbit].tolist(),
        }
        return images[view], info
    raise ValueError(f"{path}: no sample {key!r}" if key else f"{path}: the shard holds no sample")


def read_input(spec: str | Path, orbit: str = "dynamic", view: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Dispatch on the input: ``x.tar`` / ``x.tar#KEY`` (render sample), a folder, a video or image file."""
    text = str(spec)
    base, _, key = text.partition("#")
    if base.endswith(".tar"):
        return read_render_input(base, key, orbit, view)
    p = Path(text).expanduser()
    if p.is_dir():
        return read_frame_folder(p)
    return read_video(p)


def resample_frames(frames: np.ndarray, positions: list[float]) -> np.ndarray:
    """Frames at fractional `positions` (linear blend of the two neighbours; integers copy exactly)."""
    out = []
    for p in positions:
        i = int(np.floor(p))
        t = p - i
        if t < 1e-6 or i + 1 >= len(frames):
            out.append(frames[min(i, len(frames) - 1)])
        else:
            blend = (1.0 - t) * frames[i].astype(np.float32) + t * frames[i + 1].astype(np.float32)
            out.append(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
    return np.stack(out)
