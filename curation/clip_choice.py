"""`render.clip.select: most_motion`: the window of `clip_duration_s` with the most local motion, over
every action of the file (measured by analyze_asset's measure_actions pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from profiles.schema import PipelineConfig


def window_motion(
    positions: np.ndarray, times_s: np.ndarray, duration_s: float, num_frames: int, motion_fn: Any
) -> tuple[int, float]:
    """(start index, score) of the window of `duration_s` seconds that maximizes `motion_fn`.

    positions (K, P, 3) sampled at times_s (K,) increasing from 0. A window starting at sample k takes the
    `num_frames` samples nearest to times t_k + j * duration_s / num_frames (the renderer's frames), and
    its score is motion_fn(positions of those samples). Windows must end inside the action; duration 0 or
    longer than the action: the whole action (k = 0). Ties go to the earliest window.
    Example: an asset still for 2 s, then moving: with duration 1 s the best start is at or after 2 s - 1 s.
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    total = float(times_s[-1] - times_s[0])
    if duration_s <= 0 or duration_s >= total:
        span, starts = total, [0]
    else:
        span = duration_s
        starts = [k for k in range(len(times_s)) if times_s[k] + duration_s <= times_s[-1] + 1e-9]
    best = (0, -np.inf)
    for k in starts:
        want = times_s[k] + np.arange(num_frames) * (span / num_frames)
        idx = np.abs(times_s[None, :] - want[:, None]).argmin(axis=1)
        idx = np.unique(idx)
        score = float(motion_fn(positions[idx])) if len(idx) > 1 else 0.0
        if score > best[1] + 1e-12:
            best = (k, score)
    return best


def most_motion_clip(npz_path: Path, result: dict[str, Any], cfg: PipelineConfig) -> dict[str, Any]:
    """{"action", "clip_start" (source frame), "motion", "scores": {action: best score}}.

    Motion is the small_motion filter's measure (mean displacement after the global-motion correction,
    relative to the object size), so the chosen window is the one the filter would like best.
    """
    from blender_scripts.motion import analyze_clip

    m = cfg.curation.motion
    r = cfg.render

    def motion(pos: np.ndarray) -> float:
        clip = analyze_clip(
            pos, pos.min(1), pos.max(1), m.enabled, m.static_quantile, m.box_fraction, m.anchor
        )
        return float(clip["metrics"]["motion"])

    best: dict[str, Any] = {"action": None, "clip_start": None, "motion": -np.inf, "scores": {}}
    with np.load(npz_path) as npz:
        for i, action in enumerate(result["actions"]):
            frames = npz[f"frames_{i}"]
            if len(frames) < 2:
                continue
            fps = float(result["fps"])
            times = (frames - frames[0]) / fps
            k, score = window_motion(npz[f"positions_{i}"], times, r.clip_duration_s, r.num_frames, motion)
            best["scores"][action["name"]] = score
            if score > best["motion"]:
                best.update(action=action["name"], clip_start=float(frames[k]), motion=score)
    return best
