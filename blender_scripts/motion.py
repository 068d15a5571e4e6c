"""Global/local motion disentanglement (paper section 3.3, supplement 7.1 and Fig. 8), in pure numpy.

Some animated assets move off-centre: a walker's root translates across the scene. Normalizing the whole
clip then shrinks the object and lets it wander through the frame. The paper instead (1) measures the mean
temporal displacement of each surface point, (2) keeps the most static points by thresholding, (3) finds
the most static 3D bounding box and the average offset of the points inside it at each frame, and (4)
subtracts that translation from the whole object at each frame.

Choices made here (why):

- Displacement of a point is the mean over frames of its distance to its own clip-mean position, in world
  space (the paper's "mean 3D displacement of each vertex over time"). The clip mean (rather than frame 0)
  makes it independent of which frame comes first, and the mean distance (rather than the path length of
  consecutive displacements) does not grow with the frame sampling density, which differs between the demo
  (6 frames) and paper settings (24 frames). A global drift adds the same motion to every point, so the
  ranking still separates a torso (drift only) from limbs (drift plus swing). A body-relative measure was
  tried and rejected: under a rotation it ranks points by their distance to whatever reference is chosen,
  so it cannot find the axis of a body spinning in place.
- The static region is every point at or below the `static_quantile` quantile of that displacement.
- The most static box is a cube of side `box_fraction` times the object's largest extent, placed to hold
  the most static points (candidate centres: the static points themselves; ties broken by the lowest mean
  displacement; then re-centred on the static points it holds). Its size is fixed relative to the object so
  that it catches one compact static part (a torso, a head) rather than the union of scattered static
  points, which on a walker could span the hips and other slow parts of the limbs.
- The global offset at frame t is the translation of the box region relative to frame 0: frame 0 keeps its
  pose and later frames are moved back so that the static region stays where it was at frame 0. With
  `anchor="mean"` it is the mean over the box points of (p_t - p_0), literally the paper's average offset.
  The default `anchor="pivot"` fits the box's rigid motion per frame and takes the motion of its
  least-moving point (inside the box): identical to the mean when the box only translates (a walker's
  torso), but zero for a body spinning in place, where the mean of the box points (never exactly on the
  axis) would circle around the axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MotionResult:
    """Output of `disentangle_motion`.

    offsets: (F, 3) float64, world units; offsets[0] == 0. Subtract offsets[t] from every vertex at frame t.
    diagnostics: plain-JSON-able dict (see `disentangle_motion`).
    static_mask: (P,) bool, the static region of the last pass.
    box_mask: (P,) bool, the static points inside the most static box (their mean gives the offsets).
    """

    offsets: np.ndarray
    static_mask: np.ndarray
    box_mask: np.ndarray
    diagnostics: dict = field(default_factory=dict)


def _check_positions(positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise ValueError(f"positions must have shape (F, P, 3), got {positions.shape}")
    if positions.shape[0] < 1 or positions.shape[1] < 1:
        raise ValueError(f"positions needs at least one frame and one point, got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    return positions


def mean_displacement(positions: np.ndarray) -> np.ndarray:
    """(F, P, 3) -> (P,): mean over frames of each point's distance to its clip-mean position."""
    positions = np.asarray(positions, dtype=np.float64)
    centred = positions - positions.mean(axis=0, keepdims=True)
    return np.linalg.norm(centred, axis=2).mean(axis=0)


def _largest_extent(points: np.ndarray) -> float:
    return float((points.max(axis=0) - points.min(axis=0)).max())


def most_static_box(
    points: np.ndarray,
    static_mask: np.ndarray,
    displacement: np.ndarray,
    side: float,
    max_candidates: int = 512,
    max_shift_steps: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned cube of side `side` holding the most static points.

    points: (P, 3) positions that define the box (here: clip-mean positions in the body frame).
    static_mask: (P,) bool. displacement: (P,) used to break ties (lowest mean displacement wins).
    Candidate centres are static points (an evenly strided subset when there are more than
    `max_candidates`). The best box is then re-centred on the mean of the static points it holds (a few
    mean-shift steps). Returns (centre (3,), inside (P,) bool: static points inside the box).
    """
    static_idx = np.flatnonzero(static_mask)
    if static_idx.size == 0:
        raise ValueError("most_static_box: the static region is empty")
    static_pts = points[static_idx]
    stride = max(1, int(np.ceil(static_idx.size / max_candidates)))
    cand = static_pts[::stride]
    half = 0.5 * side
    best_count, best_score, best_centre = -1, np.inf, cand[0]
    chunk = max(1, 2_000_000 // max(1, static_pts.shape[0]))  # bounds the (chunk, S, 3) temporary
    static_disp = displacement[static_idx]
    for start in range(0, cand.shape[0], chunk):
        c = cand[start : start + chunk]
        inside = np.all(np.abs(static_pts[None, :, :] - c[:, None, :]) <= half, axis=2)  # (C, S)
        counts = inside.sum(axis=1)
        score = (inside * static_disp[None, :]).sum(axis=1) / np.maximum(counts, 1)
        for k in np.flatnonzero(counts == counts.max()):
            if counts[k] > best_count or (counts[k] == best_count and score[k] < best_score):
                best_count, best_score, best_centre = int(counts[k]), float(score[k]), c[k]
    # Mean shift: centre the box on the static points it holds, so that on a symmetric static region (the
    # axis of a body spinning in place) the box does not sit off to one side of it.
    centre = np.asarray(best_centre, dtype=np.float64)
    for _ in range(max_shift_steps):
        inside_all = static_mask & np.all(np.abs(points - centre[None, :]) <= half, axis=1)
        new_centre = points[inside_all].mean(axis=0)
        if np.allclose(new_centre, centre, rtol=0.0, atol=1e-9 * max(side, 1e-12)):
            break
        centre = new_centre
    inside_all = static_mask & np.all(np.abs(points - centre[None, :]) <= half, axis=1)
    if not inside_all.any():  # cannot happen for a box around a static point's cluster; kept as a guard
        raise ValueError("most_static_box: the box lost all its static points")
    return centre, inside_all


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rigid transform (Kabsch): dst ~= src @ R.T + T. src, dst: (N, 3) -> R (3, 3), T (3,).

    With fewer than three non-collinear points the rotation is unobservable and R = I (T: the mean offset).
    """
    if np.array_equal(src, dst):  # exact zero for frames where nothing moved (no SVD round-off)
        return np.eye(3), np.zeros(3)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    sv_src = np.linalg.svd(a, compute_uv=False)
    scale = max(float(sv_src[0]), 1e-300)
    if src.shape[0] < 3 or sv_src[1] < 1e-6 * scale:
        return np.eye(3), mu_d - mu_s
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, mu_d - mu_s @ rot.T


def pivot_offsets(
    src: np.ndarray, frames: np.ndarray, lo: np.ndarray, hi: np.ndarray, min_rotation_deg: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame translation of the least-moving point of a (nearly rigid) region.

    src: (N, 3) the region's points at frame 0; frames: (F, N, 3) the same points at every frame;
    lo, hi: (3,) bounds the anchor point must stay in (the static box).
    Fits R_t, T_t per frame (`rigid_fit`), then the anchor c minimizing sum_t |(R_t - I) c + T_t|^2, pulled
    towards the region's mean when the rotation is too small to locate a pivot (ridge weight of a
    `min_rotation_deg` rotation per frame) and clipped into [lo, hi]. Returns (offsets (F, 3) = motion of
    c, with offsets[0] = 0; c (3,)). Without rotation this is exactly the mean offset of the region.
    """
    F = frames.shape[0]
    rots, trans = zip(*(rigid_fit(src, frames[t]) for t in range(F)), strict=True)
    a = np.stack(rots) - np.eye(3)[None]  # (F, 3, 3)
    t = np.stack(trans)  # (F, 3)
    c0 = src.mean(axis=0)
    ridge = F * (2.0 * np.sin(np.deg2rad(min_rotation_deg) / 2.0)) ** 2
    lhs = np.einsum("fji,fjk->ik", a, a) + ridge * np.eye(3)
    rhs = ridge * c0 - np.einsum("fji,fj->i", a, t)
    c = np.clip(np.linalg.solve(lhs, rhs), lo, hi)
    offsets = np.einsum("fij,j->fi", a, c) + t
    offsets[0] = 0.0
    return offsets, c


def disentangle_motion(
    positions: np.ndarray,
    static_quantile: float = 0.2,
    box_fraction: float = 0.3,
    anchor: str = "pivot",
) -> MotionResult:
    """Per-frame global translation of an animated object, from its evaluated vertex positions.

    positions: (F, P, 3) world-space positions of P points (a fixed vertex subsample) at F clip frames.
    static_quantile: the static region is the points whose displacement is <= this quantile (0 < q <= 1).
    box_fraction: side of the most static box, relative to the object's largest extent (0 < b <= 1).
    anchor: "mean": offsets[t] = mean over the box points of (p_t - p_0), the paper's average offset;
      "pivot": the motion of the box's least-moving point (`pivot_offsets`), identical to "mean" when the
      box only translates, and ~0 for a body spinning in place about an axis through the box, where the
      plain mean would follow the box points' off-axis centre of mass around the axis.

    Returns MotionResult; offsets (F, 3) float64 with offsets[0] = 0. diagnostics: static_threshold (world
    units), num_static, num_box_points, box_centre (3, clip-mean coordinates), box_side, anchor_point (3,
    frame 0), object_size (largest extent of the union over the clip), max_offset (max |offsets[t]| /
    object_size).
    """
    positions = _check_positions(positions)
    if not 0.0 < static_quantile <= 1.0:
        raise ValueError(f"static_quantile must lie in (0, 1], got {static_quantile}")
    if not 0.0 < box_fraction <= 1.0:
        raise ValueError(f"box_fraction must lie in (0, 1], got {box_fraction}")
    if anchor not in ("mean", "pivot"):
        raise ValueError(f"anchor must be 'mean' or 'pivot', got {anchor!r}")
    F, P, _ = positions.shape
    size = _largest_extent(positions.reshape(-1, 3))
    if F == 1 or size == 0.0:
        return MotionResult(
            offsets=np.zeros((F, 3)),
            static_mask=np.ones(P, bool),
            box_mask=np.ones(P, bool),
            diagnostics={"object_size": size, "max_offset": 0.0, "num_static": P, "num_box_points": P},
        )

    disp = mean_displacement(positions)
    threshold = float(np.quantile(disp, static_quantile))
    # The tolerance keeps an exactly rigid part (equal displacements up to float noise) together.
    static = disp <= threshold + 1e-9 * size
    side = box_fraction * size
    centre, in_box = most_static_box(positions.mean(axis=0), static, disp, side)
    box_pts = positions[:, in_box, :]
    if anchor == "mean":
        offsets = box_pts.mean(axis=1) - box_pts[0].mean(axis=0)
        offsets[0] = 0.0
        anchor_point = box_pts[0].mean(axis=0)
    else:
        lo, hi = box_pts[0].min(axis=0), box_pts[0].max(axis=0)
        offsets, anchor_point = pivot_offsets(box_pts[0], box_pts, lo, hi)
    diagnostics = {
        "static_threshold": threshold,
        "num_static": int(static.sum()),
        "num_box_points": int(in_box.sum()),
        "box_centre": [float(v) for v in centre],
        "box_side": float(side),
        "anchor_point": [float(v) for v in anchor_point],
        "object_size": size,
        "max_offset": float(np.linalg.norm(offsets, axis=1).max() / size),
    }
    return MotionResult(offsets=offsets, static_mask=static, box_mask=in_box, diagnostics=diagnostics)


def motion_metrics(
    positions: np.ndarray,
    offsets: np.ndarray | None,
    bbox_min: np.ndarray,
    bbox_max: np.ndarray,
) -> dict[str, float]:
    """Filter measurements of a clip after the global-motion correction.

    positions: (F, P, 3) sampled vertices; offsets: (F, 3) or None (no correction);
    bbox_min, bbox_max: (F, 3) per-frame bounding boxes over all vertices (before correction).

    Returns a dict of floats:
      motion: mean over points and frames of the distance of each corrected point to its clip-mean
        position (`mean_displacement`), divided by object_size;
      object_size: largest extent of the union over the clip of the corrected per-frame boxes (what the
        renderer normalizes to 1);
      scale_ratio: max over min over frames of the local surface scale (`local_size`: how the area of small
        surface patches changes); exactly s for a uniform scaling by s, 1 for rigid motion AND for rigid
        articulated motion (parts moving apart keep their own size), near 1 for a squash and stretch, inf
        when the object collapses to a point in some frame;
      gyration_scale_ratio: the same ratio of the radius of gyration (RMS distance to the per-frame
        centroid), the filter's former value: rotation-invariant, but it also grows when rigid parts
        spread (a box rising out of another: 1.82);
      bbox_scale_ratio: the same ratio of the per-frame bounding box's largest extent, for reference;
      max_offset: max over frames of |offsets[t]| / object_size (how much global motion was removed).
    """
    positions = _check_positions(positions)
    F = positions.shape[0]
    bbox_min = np.asarray(bbox_min, dtype=np.float64).reshape(-1, 3)
    bbox_max = np.asarray(bbox_max, dtype=np.float64).reshape(-1, 3)
    if bbox_min.shape != (F, 3) or bbox_max.shape != (F, 3):
        raise ValueError(
            f"bbox_min/bbox_max must have shape ({F}, 3), got {bbox_min.shape}, {bbox_max.shape}"
        )
    if np.any(bbox_max < bbox_min):
        raise ValueError("bbox_max is below bbox_min somewhere")
    offsets = np.zeros((F, 3)) if offsets is None else np.asarray(offsets, dtype=np.float64)
    if offsets.shape != (F, 3):
        raise ValueError(f"offsets must have shape ({F}, 3), got {offsets.shape}")
    corrected = positions - offsets[:, None, :]
    lo = (bbox_min - offsets).min(axis=0)
    hi = (bbox_max - offsets).max(axis=0)
    size = float((hi - lo).max())
    gyration = np.sqrt(((positions - positions.mean(axis=1, keepdims=True)) ** 2).sum(axis=2).mean(axis=1))
    gyration_scale_ratio = _ratio(gyration)
    scale_ratio = _ratio(local_size(positions))
    bbox_scale_ratio = _ratio((bbox_max - bbox_min).max(axis=1))
    if size == 0.0:
        return {
            "motion": 0.0,
            "object_size": 0.0,
            "scale_ratio": scale_ratio,
            "gyration_scale_ratio": gyration_scale_ratio,
            "bbox_scale_ratio": bbox_scale_ratio,
            "max_offset": 0.0,
        }
    return {
        "motion": float(mean_displacement(corrected).mean() / size),
        "object_size": size,
        "scale_ratio": scale_ratio,
        "gyration_scale_ratio": gyration_scale_ratio,
        "bbox_scale_ratio": bbox_scale_ratio,
        "max_offset": float(np.linalg.norm(offsets, axis=1).max() / size),
    }


def local_size(positions: np.ndarray, neighbours: int = 8, max_points: int = 1000) -> np.ndarray:
    """(F,) median over points of the local surface scale of frame t relative to the reference frame (the
    widest one, by radius of gyration), times that frame's median neighbour distance.

    Each point's `neighbours` nearest points in the reference frame span a patch; its best-fit plane gives
    2D patch coordinates Q0 (k, 2), and the least-squares map A (2, 3) with Q0 A = the patch at frame t
    gives the local scale det(A A^T)^(1/4): the square root of the patch's area change. It is exactly s
    for a uniform scaling by s, 1 for rigid motion AND for rigid parts moving apart (patches inside a part
    keep their shape; the few straddling a joint do not move the median), and about 1 for a
    volume-preserving squash and stretch (area grows on some patches and shrinks on others). A
    deterministic subset of at most `max_points` points is used.
    Example: two rigid boxes, the second lifted out of the first over the clip: (r, r, ..., r).
    """
    positions = np.asarray(positions, dtype=np.float64)
    F, P, _ = positions.shape
    if P < 3:
        return np.zeros(F)
    idx = np.arange(P) if P <= max_points else np.linspace(0, P - 1, max_points).round().astype(int)
    pts = positions[:, idx]
    spread = ((pts - pts.mean(axis=1, keepdims=True)) ** 2).sum(axis=(1, 2))
    ref = pts[int(np.argmax(spread))]
    d2 = ((ref[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    d2[d2 == 0] = np.inf  # coincident points (split vertices) span no patch
    k = min(neighbours, len(idx) - 1)
    nn = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (n, k)
    ok = np.isfinite(np.take_along_axis(d2, nn, axis=1)).all(axis=1)
    if not ok.any():
        return np.zeros(F)
    centres, nn = np.arange(len(idx))[ok], nn[ok]
    d0 = ref[nn] - ref[centres, None, :]  # (n, k, 3)
    _, sv, vt = np.linalg.svd(d0, full_matrices=False)
    flat = sv[:, 1] > 1e-6 * sv[:, 0]  # a patch spanning two directions
    if not flat.any():
        return np.zeros(F)
    d0, vt, centres, nn = d0[flat], vt[flat], centres[flat], nn[flat]
    q0 = np.einsum("nkc,njc->nkj", d0, vt[:, :2])  # (n, k, 2) patch coordinates
    pinv = np.linalg.pinv(q0)  # (n, 2, k)
    ref_scale = float(np.median(np.sqrt((d0**2).sum(-1))))
    out = np.empty(F)
    for t in range(F):
        dt = pts[t][nn] - pts[t][centres, None, :]  # (n, k, 3)
        a = pinv @ dt  # (n, 2, 3)
        det = np.linalg.det(a @ a.transpose(0, 2, 1))
        out[t] = ref_scale * float(np.median(np.abs(det) ** 0.25))
    return out


def _ratio(sizes: np.ndarray) -> float:
    """max / min of positive per-frame sizes; 1 when all are 0, inf when only some are."""
    if sizes.min() > 0:
        return float(sizes.max() / sizes.min())
    return 1.0 if sizes.max() == 0 else float("inf")


def analyze_clip(
    positions: np.ndarray,
    bbox_min: np.ndarray,
    bbox_max: np.ndarray,
    enabled: bool = True,
    static_quantile: float = 0.2,
    box_fraction: float = 0.3,
    anchor: str = "pivot",
) -> dict:
    """The whole curation measurement of one clip (the contents of the analysis pass's analysis.npz).

    positions (F, P, 3), bbox_min/bbox_max (F, 3). enabled=False skips the correction (offsets are zero).
    Returns {"offsets": (F, 3) float64 array (subtract from the whole object at frame t),
    "metrics": `motion_metrics` dict (measured after the correction), "diagnostics": dict}.
    """
    positions = _check_positions(positions)
    if enabled:
        res = disentangle_motion(positions, static_quantile, box_fraction, anchor)
        offsets, diagnostics = res.offsets, res.diagnostics
    else:
        offsets, diagnostics = np.zeros((positions.shape[0], 3)), {"disabled": True}
    return {
        "offsets": offsets,
        "metrics": motion_metrics(positions, offsets, bbox_min, bbox_max),
        "diagnostics": diagnostics,
    }
