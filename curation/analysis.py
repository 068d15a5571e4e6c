"""Curation decisions from the Blender analysis pass: motion correction, filters, lighting choice.

Runs in the Ray worker between the analysis pass and the render pass (paper section 3.3, supp. 7.1):
the global translation of the most static region is measured on the evaluated vertices, the filters
are applied to the values measured after that correction, and a near-ambient environment is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from profiles.schema import PipelineConfig

#: Reasons of the analysis pass that are curation decisions rather than broken assets.
FILTER_REASONS_FROM_ANALYSIS = ("no_animation",)


@dataclass
class CurationDecision:
    status: str  # accept | filtered
    reason: str | None = None
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    """Measured values under manifest column names (motion, scale_ratio, clip_frames...)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further measurements and diagnostics for the sample metadata."""
    global_offsets: list[list[float]] | None = None
    environment: dict[str, Any] = field(default_factory=lambda: {"kind": "sky", "strength": 1.0})


def curate(asset_dir: Path, analysis: dict[str, Any], record: Any, cfg: PipelineConfig) -> CurationDecision:
    """Decide one analysed asset: offsets (F x 3, world units) to subtract, filter verdict, lighting."""
    from blender_scripts.motion import analyze_clip
    from curation.filters import decide
    from curation.hdri import choose_environment

    mode = cfg.render.mode
    metrics = None
    offsets = None
    diagnostics: dict[str, Any] = {}
    if analysis.get("has_animation") and mode == "4d":
        with np.load(Path(asset_dir) / "analysis.npz") as npz:
            positions, bmin, bmax = npz["positions"], npz["bbox_min"], npz["bbox_max"]
        m = cfg.curation.motion
        clip = analyze_clip(positions, bmin, bmax, m.enabled, m.static_quantile, m.box_fraction, m.anchor)
        metrics, diagnostics = clip["metrics"], clip["diagnostics"]
        offsets = np.asarray(clip["offsets"], np.float64).tolist() if m.enabled else None
    verdict = decide(record, analysis, metrics, cfg.curation.filters, mode, cfg.assets.licenses)
    environment = {"kind": "sky", "strength": cfg.render.sky_strength}
    if verdict.accepted:  # a filtered asset is never lit: skip the library scan
        environment = choose_environment(
            record.uid, cfg.curation.hdri, cfg.assets.seed, sky_strength=cfg.render.sky_strength
        )
    return CurationDecision(
        status=verdict.status,
        reason=verdict.reason,
        detail=verdict.detail,
        values=dict(verdict.values),
        extra={**verdict.extra, "motion_diagnostics": diagnostics},
        global_offsets=offsets,
        environment=environment,
    )
