"""Asset filters (paper section 3.3, supplement 7.1): accept or filter one asset, with the measured values.

Checks, in this order (the first that fails gives the reason; every value is measured and recorded anyway):
    license              the record's licence is not in the allow-list (`curation.sources.license_allowed`)
    too_many_vertices    num_vertices > max_vertices
    too_many_faces       num_faces > max_faces
    no_animation         (4d only) the analysis pass found no animation
    clip_too_short       (4d only) the action spans fewer than min_clip_frames frames
    orphan_skeleton      a skinned glTF whose skeleton root is in no scene (when filter_orphan_skeleton)
    inconsistent_scale   (4d only) scale_ratio > max_scale_ratio
    small_motion         (4d only) motion < min_motion (after the global-motion correction)
In `static` mode (orbit-only samples for 3D pre-training) only the first three and orphan_skeleton apply.
After the render pass, `decide_images` checks the images themselves:
    border_touch         more than max_border_images images have alpha on their outermost pixel ring
    transparent_image    more than max_transparent_images images cover less than min_alpha_coverage
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from curation.sources import license_allowed, normalize_license, spdx_license
from profiles.schema import FilterConfig

REASONS = (
    "license",
    "too_many_vertices",
    "too_many_faces",
    "no_animation",
    "clip_too_short",
    "orphan_skeleton",
    "inconsistent_scale",
    "small_motion",
    "border_touch",
    "transparent_image",
)


@dataclass
class Decision:
    """status: accept | filtered; reason: one of REASONS or None; detail: human text for the manifest.

    values: measured values under manifest column names (license, num_vertices, num_faces, clip_frames,
    motion, scale_ratio), None where not measured; extra: further measurements (max_offset, object_size,
    license_normalized) for the sample metadata, not manifest columns.
    """

    status: Literal["accept", "filtered"]
    reason: str | None = None
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.status == "accept"


def clip_frames(analysis: dict[str, Any]) -> int:
    """Frames spanned by the chosen action: end - start + 1 of `frames.action_frame_range`, else the number
    of distinct `frames.source_frames`; 0 without animation."""
    frames = analysis.get("frames") or {}
    rng = frames.get("action_frame_range")
    if rng is not None and len(rng) == 2:
        return int(math.floor(float(rng[1]) - float(rng[0]) + 1e-6)) + 1
    return len(set(frames.get("source_frames") or []))


def license_decision(record: Any, cfg: FilterConfig, licenses: Sequence[str]) -> Decision:
    """The licence check alone: cheap, so it can run before an asset is downloaded."""
    values = {"license": record.license}
    extra = {
        "license_normalized": normalize_license(record.license),
        "license_spdx": spdx_license(record.license),
    }
    if cfg.require_license and not license_allowed(record.license, licenses):
        detail = f"license {record.license!r} ({extra['license_normalized']}) not in {sorted(set(licenses))}"
        return Decision("filtered", "license", detail, values, extra)
    return Decision("accept", None, "", values, extra)


def decide(
    record: Any,
    analysis: dict[str, Any],
    metrics: dict[str, float] | None,
    cfg: FilterConfig,
    mode: Literal["4d", "static"] = "4d",
    licenses: Sequence[str] = (),
) -> Decision:
    """Accept or filter one asset.

    record: an AssetRecord (uses .license). analysis: the analysis pass's analysis.json (num_vertices,
    num_faces, has_animation, frames{action_frame_range, source_frames}). metrics: `motion_metrics` output
    (motion, scale_ratio, max_offset, object_size), or None when there is no animation (required in 4d
    mode for an animated asset). licenses: the allow-list (AssetsConfig.licenses).
    """
    if mode not in ("4d", "static"):
        raise ValueError(f"mode must be '4d' or 'static', got {mode!r}")
    has_animation = bool(analysis.get("has_animation"))
    if mode == "4d" and has_animation and metrics is None:
        raise ValueError(
            f"decide: asset {getattr(record, 'uid', '?')!r} is animated but has no motion metrics"
        )
    lic = license_decision(record, cfg, licenses)
    values: dict[str, Any] = dict(lic.values)
    extra: dict[str, Any] = dict(lic.extra)
    nv, nf = analysis.get("num_vertices"), analysis.get("num_faces")
    values["num_vertices"] = None if nv is None else int(nv)
    values["num_faces"] = None if nf is None else int(nf)
    values["clip_frames"] = clip_frames(analysis) if has_animation else 0
    values["motion"] = None
    values["scale_ratio"] = None
    if metrics is not None:
        values["motion"] = float(metrics["motion"])
        values["scale_ratio"] = float(metrics["scale_ratio"])
        if "gyration_scale_ratio" in metrics:  # the former measure, kept for comparison
            values["gyration_scale_ratio"] = float(metrics["gyration_scale_ratio"])
        extra.update({k: float(v) for k, v in metrics.items() if k not in values})

    def out(reason: str | None, detail: str = "") -> Decision:
        return Decision("accept" if reason is None else "filtered", reason, detail, values, extra)

    if not lic.accepted:
        return out(lic.reason, lic.detail)
    if nv is not None and nv > cfg.max_vertices:
        return out("too_many_vertices", f"{nv} vertices > max_vertices {cfg.max_vertices}")
    if nf is not None and nf > cfg.max_faces:
        return out("too_many_faces", f"{nf} faces > max_faces {cfg.max_faces}")
    if cfg.filter_orphan_skeleton and analysis.get("orphan_skeleton"):
        skins = analysis.get("orphan_skins")
        return out("orphan_skeleton", f"skin(s) {skins} have joints in no scene (imports mis-oriented)")
    if mode == "static":
        return out(None)
    if not has_animation:
        return out("no_animation", str(analysis.get("reason") or "the analysis pass found no animation"))
    if values["clip_frames"] < cfg.min_clip_frames:
        return out(
            "clip_too_short", f"{values['clip_frames']} frames < min_clip_frames {cfg.min_clip_frames}"
        )
    if not values["scale_ratio"] <= cfg.max_scale_ratio:  # also catches inf / NaN
        return out(
            "inconsistent_scale",
            f"scale ratio {values['scale_ratio']:.3g} > max_scale_ratio {cfg.max_scale_ratio}",
        )
    if not values["motion"] >= cfg.min_motion:
        return out("small_motion", f"motion {values['motion']:.3g} < min_motion {cfg.min_motion}")
    return out(None)


def decide_images(stats: dict[str, Any], cfg: FilterConfig) -> tuple[str, str] | None:
    """(reason, detail) when the rendered images fail a check, else None; stats from image_checks."""
    covs = [c for orbit in stats["coverage"].values() for row in orbit for c in row]
    transparent = sum(c < cfg.min_alpha_coverage for c in covs)
    if stats["border_images"] > cfg.max_border_images:
        return (
            "border_touch",
            f"{stats['border_images']} of {stats['images']} images have alpha on the border "
            f"> max_border_images {cfg.max_border_images}",
        )
    if transparent > cfg.max_transparent_images:
        return (
            "transparent_image",
            f"{transparent} of {len(covs)} images cover < {cfg.min_alpha_coverage} "
            f"> max_transparent_images {cfg.max_transparent_images}",
        )
    return None
