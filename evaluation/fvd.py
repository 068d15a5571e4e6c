"""FVD over a views x frames image matrix, in the four variants of SV4D (Xie et al. 2024), SV4D 2.0 section 5.

The matrix M[v, f] holds the image of view v at frame f. Each variant cuts it into videos (lists of (v, f)):

- FVD-F, ``fvd_f``: one video per view, over the frames (temporal consistency at a fixed camera).
- FVD-V, ``fvd_v``: one video per frame, over the views (multi-view consistency of a frozen instant).
- FVD-Diag, ``fvd_diag``: one video along the diagonal, M[i mod V, i mod F] for i < max(V, F) (``wrap``,
  the default: on a square matrix exactly the main diagonal; on the paper's 8 x 21 matrix every frame once,
  the view cycling), or M[i, i] for i < min(V, F) (``main``).
- FV4D, ``fv4d``: one video of all V * F images in bidirectional raster (zig-zag) order: view 0 over frames
  0..F-1, view 1 over frames F-1..0, view 2 forward again, ... (``rows="view"``); ``rows="frame"`` swaps the
  roles. Consecutive images then always differ by one step in exactly one of view or frame.

Frechet distance. Features of a set of videos (N, D) give a Gaussian (mu, Sigma);
``d = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` with scipy's ``sqrtm``. Worked example: two
Gaussians in 1-D with means 0 and 3 and variances 4 and 1 are at ``9 + 4 + 1 - 2 * 2 = 10``.

What breaks common FVD scripts, and what we do:
- One video per side (the per-video protocol, or a set of one): the sample covariance (ddof 1) is undefined
  (NaN in ``np.cov``). We take it as zero, so the distance reduces to ``|mu_1 - mu_2|^2``, never NaN.
- A singular covariance (fewer videos than feature dimensions, always so per object): when ``sqrtm`` of the
  product is not finite, both covariances get ``eps * I`` added (as pytorch-fid), and the imaginary part
  that rounding leaves is dropped. The result is clamped at 0 (rounding can make it slightly negative).
- Short clips: I3D's last temporal pooling needs at least 9 frames, and FVD is defined on 16-frame clips;
  a video shorter than ``min_frames`` is stretched by nearest-index resampling (``resample``: frame
  ``floor(i * T / min_frames)``, each frame repeated about equally) or by repeating its last frame (``pad``).
  Longer videos pass whole (I3D pools over time).

Protocols. ``per_video``: each predicted video against its own ground-truth video (one feature each, so
``|mu_1 - mu_2|^2`` of the I3D features), averaged over the videos of an object and then over objects. The
SV4D papers evaluate each object's prediction against its own ground truth and publish no FVD script; the
tables are read as this protocol (``evaluation.fvd_protocol`` picks what the Markdown table shows).
``set``: all predicted videos of a variant over all objects against all ground-truth videos, one Frechet
distance (the usual generative-model FVD).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

Variant = Literal["fvd_f", "fvd_v", "fvd_diag", "fv4d"]
VARIANTS: tuple[Variant, ...] = ("fvd_f", "fvd_v", "fvd_diag", "fv4d")
Order = list[tuple[int, int]]
"""A video: the (view, frame) index of each of its images, in playback order."""


def _check_shape(num_views: int, num_frames: int) -> None:
    if num_views < 1 or num_frames < 1:
        raise ValueError(
            f"the image matrix must have at least one view and one frame, got {num_views}x{num_frames}"
        )


def frame_videos(num_views: int, num_frames: int) -> list[Order]:
    """FVD-F: one video per view, over the frames."""
    _check_shape(num_views, num_frames)
    return [[(v, f) for f in range(num_frames)] for v in range(num_views)]


def view_videos(num_views: int, num_frames: int) -> list[Order]:
    """FVD-V: one video per frame, over the views."""
    _check_shape(num_views, num_frames)
    return [[(v, f) for v in range(num_views)] for f in range(num_frames)]


def diagonal_order(num_views: int, num_frames: int, mode: Literal["wrap", "main"] = "wrap") -> Order:
    """FVD-Diag: ``wrap``: (i mod V, i mod F) for i < max(V, F); ``main``: (i, i) for i < min(V, F).

    >>> diagonal_order(2, 5)
    [(0, 0), (1, 1), (0, 2), (1, 3), (0, 4)]
    """
    _check_shape(num_views, num_frames)
    if mode == "main":
        return [(i, i) for i in range(min(num_views, num_frames))]
    if mode == "wrap":
        return [(i % num_views, i % num_frames) for i in range(max(num_views, num_frames))]
    raise ValueError(f"diagonal mode must be 'wrap' or 'main', got {mode!r}")


def zigzag_order(num_views: int, num_frames: int, rows: Literal["view", "frame"] = "view") -> Order:
    """FV4D: every image once, in bidirectional raster order (rows = views by default).

    >>> zigzag_order(2, 3)
    [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
    """
    _check_shape(num_views, num_frames)
    if rows not in ("view", "frame"):
        raise ValueError(f"zig-zag rows must be 'view' or 'frame', got {rows!r}")
    outer, inner = (num_views, num_frames) if rows == "view" else (num_frames, num_views)
    order: Order = []
    for r in range(outer):
        cols = range(inner) if r % 2 == 0 else range(inner - 1, -1, -1)
        order += [(r, c) if rows == "view" else (c, r) for c in cols]
    return order


def variant_videos(
    variant: Variant,
    num_views: int,
    num_frames: int,
    diagonal: Literal["wrap", "main"] = "wrap",
    zigzag_rows: Literal["view", "frame"] = "view",
) -> list[Order]:
    """The videos of one variant (a list of orders; FVD-Diag and FV4D have one each)."""
    if variant == "fvd_f":
        return frame_videos(num_views, num_frames)
    if variant == "fvd_v":
        return view_videos(num_views, num_frames)
    if variant == "fvd_diag":
        return [diagonal_order(num_views, num_frames, diagonal)]
    if variant == "fv4d":
        return [zigzag_order(num_views, num_frames, zigzag_rows)]
    raise ValueError(f"unknown FVD variant {variant!r} (one of {list(VARIANTS)})")


def clip_indices(length: int, min_frames: int, mode: Literal["resample", "pad"] = "resample") -> list[int]:
    """Frame indices that stretch a clip of ``length`` frames to at least ``min_frames``.

    >>> clip_indices(3, 8)
    [0, 0, 0, 1, 1, 1, 2, 2]
    >>> clip_indices(3, 5, "pad")
    [0, 1, 2, 2, 2]
    """
    if length < 1:
        raise ValueError("a clip needs at least one frame")
    if length >= min_frames:
        return list(range(length))
    if mode == "resample":
        return [i * length // min_frames for i in range(min_frames)]
    if mode == "pad":
        return list(range(length)) + [length - 1] * (min_frames - length)
    raise ValueError(f"short-clip mode must be 'resample' or 'pad', got {mode!r}")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of features (N, D) in float64; N = 1 gives a zero covariance."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise ValueError(f"features must be (N >= 1, D), got shape {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("features contain NaN or Inf (the feature extractor diverged)")
    mu = feats.mean(axis=0)
    if feats.shape[0] == 1:
        return mu, np.zeros((feats.shape[1], feats.shape[1]))
    return mu, np.atleast_2d(np.cov(feats, rowvar=False))


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr((S1 S2)^(1/2)); 0 when either is zero (the square root of the zero matrix)."""
    from scipy.linalg import LinAlgWarning, sqrtm

    if not sigma1.any() or not sigma2.any():
        return 0.0
    with warnings.catch_warnings():  # a singular product is expected (N < D); non-finite output is handled
        warnings.simplefilter("ignore", LinAlgWarning)
        covmean = sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return float(np.real(np.trace(covmean)))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance of two Gaussians: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), finite and >= 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched Gaussian statistics: means {mu1.shape} vs {mu2.shape}, "
            f"covariances {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    dist = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * _trace_sqrt_product(sigma1, sigma2, eps)
    if not math.isfinite(dist):
        raise ValueError("Frechet distance is not finite (non-finite statistics)")
    return max(float(dist), 0.0)


def fvd_from_features(pred: np.ndarray, gt: np.ndarray) -> float:
    """Frechet distance between two feature sets (N, D) and (M, D), N and M >= 1."""
    return frechet_distance(*feature_statistics(pred), *feature_statistics(gt))


def per_video_fvd(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """The per-video protocol: row i of ``pred`` against row i of ``gt`` (one video each side)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(
            f"per-video FVD needs paired features of one shape (N, D), got {pred.shape} and {gt.shape}"
        )
    return [fvd_from_features(p[None], g[None]) for p, g in zip(pred, gt)]


def mean_or_none(values: Sequence[float]) -> float | None:
    """Mean of the finite values; None when there is none (JSON has no NaN)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None
