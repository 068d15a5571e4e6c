"""Per-image alpha checks of a finished render: how much of each image the object covers, and whether it
touches the border (the framing rule in shards/render_schema.py promises it never does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def alpha_coverage(alpha: np.ndarray) -> float:
    """Mean alpha in [0, 1] of a uint8 (H, W) alpha channel. Example: half the pixels at 255 -> 0.5."""
    return float(np.asarray(alpha, dtype=np.float64).mean() / 255.0)


def touches_border(alpha: np.ndarray) -> bool:
    """Whether any pixel of the outermost ring of a (H, W) alpha channel is not fully transparent."""
    a = np.asarray(alpha)
    return bool(a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any())


def image_stats(render_dir: Path, result: dict[str, Any], min_coverage: float = 0.001) -> dict[str, Any]:
    """Coverage and border touch of every image the render's result.json promises.

    Returns {"coverage": {orbit: (V, F) list}, "border": {orbit: (V, F) list of bools}, "border_images",
    "transparent_images" (coverage below `min_coverage`), "min_coverage", "max_coverage", "images"}.
    """
    from PIL import Image

    views = len(next(iter(result["cameras"].values()))["c2w"])
    frames = 1 if result.get("mode") == "static" else len(result["frames"]["source_frames"])
    coverage: dict[str, list[list[float]]] = {}
    border: dict[str, list[list[bool]]] = {}
    for orbit in result["cameras"]:
        coverage[orbit], border[orbit] = [], []
        for v in range(views):
            cov_row, bor_row = [], []
            for f in range(frames):
                with Image.open(Path(render_dir) / orbit / f"v{v:02d}_f{f:02d}.png") as im:
                    alpha = np.asarray(im.convert("RGBA"))[..., 3]
                cov_row.append(alpha_coverage(alpha))
                bor_row.append(touches_border(alpha))
            coverage[orbit].append(cov_row)
            border[orbit].append(bor_row)
    covs = np.array([c for o in coverage.values() for row in o for c in row])
    bors = np.array([b for o in border.values() for row in o for b in row])
    return {
        "coverage": coverage,
        "border": border,
        "images": int(covs.size),
        "border_images": int(bors.sum()),
        "transparent_images": int((covs < min_coverage).sum()),
        "min_coverage": float(covs.min()),
        "max_coverage": float(covs.max()),
    }
