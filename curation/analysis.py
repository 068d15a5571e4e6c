"""Curation decisions from the Blender analysis pass: motion correction, filters, lighting choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.schema import PipelineConfig


@dataclass
class CurationDecision:
    status: str  # accept | filtered
    reason: str | None = None
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    """Measured values for the manifest (motion, scale_ratio, clip_frames...)."""
    global_offsets: list[list[float]] | None = None
    environment: dict[str, Any] = field(default_factory=lambda: {"kind": "sky", "strength": 1.0})


def curate(asset_dir: Path, analysis: dict[str, Any], record: Any, cfg: PipelineConfig) -> CurationDecision:
    """Accept everything the analysis pass accepted; lit by the procedural sky."""
    env = {"kind": "sky", "strength": cfg.render.sky_strength}
    frames = analysis.get("frames") or {}
    return CurationDecision(
        status="accept",
        values={"clip_frames": len(frames.get("source_frames") or [])},
        environment=env,
    )
