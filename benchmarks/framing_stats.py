"""Per-image framing statistics of finished renders: alpha coverage, border touches, widest fill.

    .venv/bin/python benchmarks/framing_stats.py OUT/work/shard-000000 [more folders ...]

Finds every render folder (a `result.json` with status ok) under the given folders and prints one row per
asset: images, images with alpha on their outermost pixel ring, alpha coverage (min / median / max over
images), the widest fill (the largest distance of an alpha > 0 pixel edge from the image centre along u or
v, over the half side: the framing rule aims at 0.9 plus the pixel filter's reach), and the scale the
paper's largest-extent-1 rule would have used relative to the framing scale (> 1: the old images were
larger, and cut). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.image_checks import alpha_coverage, touches_border  # noqa: E402


def widest_fill(alpha: np.ndarray) -> float:
    rows, cols = np.nonzero(alpha)
    if len(rows) == 0:
        return 0.0
    half = alpha.shape[0] / 2
    return float(max(np.abs(cols + 0.5 - half).max(), np.abs(rows + 0.5 - half).max()) + 0.5) / half


def folder_stats(render_dir: Path) -> dict:
    result = json.loads((render_dir / "result.json").read_text())
    covs, borders, fills = [], [], []
    for png in sorted(render_dir.glob("*/*.png")):
        alpha = np.asarray(Image.open(png).convert("RGBA"))[..., 3]
        covs.append(alpha_coverage(alpha))
        borders.append(touches_border(alpha))
        fills.append(widest_fill(alpha))
    norm = result["normalization"]
    return {
        "uid": result["uid"],
        "images": len(covs),
        "border_images": int(sum(borders)),
        "coverage": (min(covs), float(np.median(covs)), max(covs)) if covs else (0, 0, 0),
        "widest_fill": max(fills) if fills else 0.0,
        "old_scale_ratio": norm.get("unit_extent_scale", norm["scale"]) / norm["scale"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for folder in args.folders:
        for result in sorted(folder.glob("**/result.json")):
            if json.loads(result.read_text()).get("status") == "ok" and list(result.parent.glob("*/*.png")):
                rows.append(folder_stats(result.parent))
    print("| asset | images | border images | coverage min / median / max | widest fill | old / new scale |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        c = r["coverage"]
        print(
            f"| {r['uid']} | {r['images']} | {r['border_images']} | {c[0]:.3f} / {c[1]:.3f} / {c[2]:.3f} "
            f"| {r['widest_fill']:.3f} | {r['old_scale_ratio']:.2f} |"
        )
    total = sum(r["images"] for r in rows)
    print(f"\n{len(rows)} assets, {total} images, {sum(r['border_images'] for r in rows)} touch the border")
    return 0


if __name__ == "__main__":
    sys.exit(main())
