"""Autoregressive frame windows and view groups of novel-view sampling: pure index math, no model.

Frames. The network samples T frames at a time. Windows start at 0, T-1, 2(T-1), ... and the last one is
clamped to end at the last frame, so every later window starts on a frame an earlier window has already
generated: its generated views at that start frame are the window's reference views (the paper's
p(M | M_{v,0}, J, pi)). The release (`simple_video_sample_4d2.py`) steps by T instead; both give the same
windows for every length it supports (at most 2T - 1 frames, e.g. its default 21 -> [0..11], [9..20]); for
longer videos its step-T window would start on a frame not yet generated. Each output frame is written
by exactly one window: the first that covers it (a later window regenerates its overlap frames only as
context; the release overwrites them, we keep the ones its reference views were taken from).

Views. More target views than the network's V are sampled in groups: group 0 holds the first V views;
each later group holds `anchors` views of the previous group (whose images at the window's start frame are
known) followed by up to V - anchors new views. The anchors carry their generated start-frame images as
reference views, the new views carry none (zeros), and the anchors' outputs are dropped, so every group is
tied to the one before it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One sampler call along time. frames: the T input frames it sees; writes: the frames it outputs;
    ref_frame: the frame whose generated views are its reference views (None for the first window)."""

    frames: tuple[int, ...]
    writes: tuple[int, ...]
    ref_frame: int | None

    @property
    def start(self) -> int:
        return self.frames[0]


def window_schedule(num_frames: int, window: int) -> list[Window]:
    """Windows of `window` frames covering 0..num_frames-1, overlapping by one frame (see module doc).

    Example: 21 frames, T = 12 -> frames 0..11 (writes 0..11, no reference), frames 9..20 (writes 12..20,
    reference frame 9). num_frames must be at least `window` (fill short videos first: `fill_frames`).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, got {window}")
    if num_frames < window:
        raise ValueError(f"{num_frames} frames are fewer than one window of {window}: fill them first")
    step = max(window - 1, 1)
    out: list[Window] = []
    done = 0  # frames [0, done) are written
    start = 0
    while done < num_frames:
        start = min(start, num_frames - window)
        frames = tuple(range(start, start + window))
        writes = tuple(f for f in frames if f >= done)
        # T = 1 cannot overlap: its reference is then the previous frame
        ref = None if not out else min(start, done - 1)
        out.append(Window(frames=frames, writes=writes, ref_frame=ref))
        done = start + window
        start += step
    return out


def fill_frames(num_frames: int, window: int, mode: str = "repeat") -> list[float]:
    """Source frame positions for a video shorter than one window: `window` positions in [0, n-1].

    repeat: nearest source frame (each repeated about window / n times, in order); interpolate: evenly
    spaced fractional positions (blend the two neighbours). A video of at least `window` frames is returned
    unchanged.
    """
    if num_frames < 1:
        raise ValueError("no frames to fill from")
    if num_frames >= window:
        return [float(i) for i in range(num_frames)]
    if window == 1:
        return [0.0]
    pos = [i * (num_frames - 1) / (window - 1) for i in range(window)]
    if mode == "interpolate":
        return pos
    if mode == "repeat":
        return [float(min(int(i * num_frames / window), num_frames - 1)) for i in range(window)]
    raise ValueError(f"fill mode {mode!r} is not one of repeat, interpolate")


def select_frames(num_frames: int, stride: int = 1, target: int = 0) -> list[int]:
    """Frames to keep from a source of `num_frames`: every `stride`-th, then `target` evenly spaced of those
    (0: all). Example: 10 frames, stride 2 -> [0, 2, 4, 6, 8]; target 3 -> [0, 4, 8]."""
    if num_frames < 1:
        raise ValueError("the input has no frames")
    if stride < 1 or target < 0:
        raise ValueError(f"stride must be >= 1 and target >= 0, got {stride}, {target}")
    idx = list(range(0, num_frames, stride))
    if target and target < len(idx):
        idx = [idx[round(i * (len(idx) - 1) / (target - 1))] if target > 1 else idx[0] for i in range(target)]
    return idx


@dataclass(frozen=True)
class ViewGroup:
    """One sampler call across views: `slots` are indices into the full target view list (network order);
    `anchors` of them (the first ones) come from the previous group and are conditioned, not output."""

    slots: tuple[int, ...]
    anchors: int

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.slots[self.anchors :]


def view_groups(num_views: int, per_group: int, anchors: int = 1) -> list[ViewGroup]:
    """Split `num_views` target views into network calls of at most `per_group` views (see module doc).

    Example: 8 views, V = 4, 1 anchor -> (0,1,2,3), (0 | 4,5,6), (4 | 7). Each view is output exactly once.
    """
    if num_views < 1 or per_group < 1:
        raise ValueError(f"need at least one view and one slot, got {num_views}, {per_group}")
    if num_views <= per_group:
        return [ViewGroup(tuple(range(num_views)), 0)]
    if not 1 <= anchors < per_group:
        raise ValueError(f"anchors must lie in [1, {per_group - 1}] to chain groups of {per_group} views")
    groups = [ViewGroup(tuple(range(per_group)), 0)]
    nxt = per_group
    while nxt < num_views:
        prev_out = groups[-1].outputs
        anchor = prev_out[:anchors] if len(prev_out) >= anchors else groups[-1].slots[:anchors]
        new = tuple(range(nxt, min(nxt + per_group - len(anchor), num_views)))
        groups.append(ViewGroup(tuple(anchor) + new, len(anchor)))
        nxt += len(new)
    return groups
