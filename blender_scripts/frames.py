"""Which source frames of an animation clip to render: pure numpy, no bpy.

Frame numbers are Blender scene frames (floats: Blender evaluates subframes, and glTF imports often have
fractional action ranges such as 0.96..383.04). The clip starts at the action's first frame; frames are
taken at F uniform steps of window/F over the first `duration_s` seconds (or the whole action), the window
end excluded: most animations loop, and a looping clip's last frame repeats its first, which would give a
duplicated pose (and a two-frame sample with no motion at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameSample:
    """source_frames: (F,) float Blender frame numbers; times_s: (F,) seconds since the clip start."""

    source_frames: np.ndarray
    times_s: np.ndarray

    def to_json(self) -> dict:
        return {"source_frames": self.source_frames.tolist(), "times_s": self.times_s.tolist()}


def sample_frames(
    frame_start: float, frame_end: float, fps: float, num_frames: int, duration_s: float = 0.0
) -> FrameSample:
    """F frames uniformly over the first `duration_s` seconds of the clip [frame_start, frame_end].

    duration_s = 0 (or a clip shorter than duration_s) takes the whole clip. F = 1 gives frame_start.
    Example: (1, 49, 24 fps, 3 frames, 1.0 s) -> frames [1, 9, 17], times [0, 1/3, 2/3].

    Raises ValueError for an empty clip (frame_end <= frame_start), a non-positive fps or num_frames, or a
    negative duration.
    """
    if not (np.isfinite(frame_start) and np.isfinite(frame_end)) or frame_end <= frame_start:
        raise ValueError(f"empty clip: frame range [{frame_start}, {frame_end}] has no duration")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    span = float(frame_end - frame_start)
    if duration_s > 0:
        span = min(span, duration_s * fps)
    offsets = np.arange(num_frames) * (span / num_frames)
    return FrameSample(source_frames=float(frame_start) + offsets, times_s=offsets / fps)
