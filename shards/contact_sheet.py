"""Contact sheets: one PNG per sample, a grid of views (rows) x frames (columns) for each orbit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shards.render_schema import RenderSample


def _checker(h: int, w: int, cell: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    light = ((yy // cell + xx // cell) % 2).astype(np.float32)
    return (200 + 40 * light)[..., None].repeat(3, axis=2)


def composite(rgba: np.ndarray, background: str = "checker") -> np.ndarray:
    """uint8 (H, W, 4) -> uint8 (H, W, 3) over a checkerboard (shows transparency) or white."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    h, w = rgba.shape[:2]
    bg = _checker(h, w) if background == "checker" else np.full((h, w, 3), 255.0, np.float32)
    return np.clip(rgb * alpha + bg * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)


def contact_sheet(sample: RenderSample, thumb: int = 96, pad: int = 2) -> Image.Image:
    """Orbits stacked vertically; in each, row v = view v, column f = frame f, labelled."""
    label_h = 14
    blocks: list[Image.Image] = []
    for orbit in sample.orbits:
        stack = sample.images[orbit]
        V, F = stack.shape[:2]
        width = F * (thumb + pad) + pad + 48
        height = V * (thumb + pad) + pad + label_h
        sheet = Image.new("RGB", (width, height), (30, 30, 30))
        draw = ImageDraw.Draw(sheet)
        draw.text((4, 1), f"{sample.key}  {orbit} orbit  {V} views x {F} frames", fill=(230, 230, 230))
        angles = sample.angles.get(orbit)
        for v in range(V):
            y = label_h + pad + v * (thumb + pad)
            if angles is not None:
                draw.text((2, y + 2), f"e{angles[v, 0]:.0f}", fill=(200, 200, 200))
                draw.text((2, y + 14), f"a{angles[v, 1]:.0f}", fill=(200, 200, 200))
            for f in range(F):
                img = Image.fromarray(composite(stack[v, f])).resize((thumb, thumb), Image.BILINEAR)
                sheet.paste(img, (48 + pad + f * (thumb + pad), y))
        blocks.append(sheet)
    width = max(b.width for b in blocks)
    out = Image.new("RGB", (width, sum(b.height for b in blocks)), (30, 30, 30))
    y = 0
    for block in blocks:
        out.paste(block, (0, y))
        y += block.height
    return out


def write_contact_sheet(sample: RenderSample, out_dir: str | Path, thumb: int = 96) -> Path:
    out = Path(out_dir) / f"{sample.key}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(sample, thumb=thumb).save(out)
    return out
