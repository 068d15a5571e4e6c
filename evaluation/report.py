"""Totals over objects and the Markdown table in the layout of the paper's Tables 1, 2, 5 and 6.

Rows are systems, columns LPIPS, CLIP-S, PSNR, SSIM, MSE, FVD-F, FVD-V, FVD-Diag, FV4D with the paper's
arrows and decimals; a metric that was not computed (no weights configured) is '-', as the paper writes
for baselines it could not run. The caption under the table states what each column is (region, LPIPS
backbone, FVD protocol) and whether the networks had random weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.fvd import VARIANTS, fvd_from_features, mean_or_none

#: (header, key in a total's values, decimals); "{lpips}" and "{region}" are filled per table.
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("LPIPS↓", "lpips_{lpips}", 3),
    ("CLIP-S↑", "clip_s", 3),
    ("PSNR↑", "psnr{region}", 2),
    ("SSIM↑", "ssim{region}", 3),
    ("MSE↓", "mse{region}", 4),
    ("FVD-F↓", "fvd_f", 2),
    ("FVD-V↓", "fvd_v", 2),
    ("FVD-Diag↓", "fvd_diag", 2),
    ("FV4D↓", "fv4d", 2),
)


def mean_metrics(objects: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean over the evaluated objects of each metric (objects without a value for it are left out)."""
    names = sorted({k for o in objects for k in o.get("metrics", {})})
    return {
        n: mean_or_none([o["metrics"].get(n) for o in objects if o["metrics"].get(n) is not None])
        for n in names
    }


def set_level_fvd(
    pred: dict[str, list[np.ndarray]], gt: dict[str, list[np.ndarray]]
) -> dict[str, float | None]:
    """Set-level FVD per variant: all predicted videos of all objects against all ground-truth videos."""
    out: dict[str, float | None] = {}
    for variant in VARIANTS:
        if pred.get(variant) and gt.get(variant):
            out[variant] = fvd_from_features(np.concatenate(pred[variant]), np.concatenate(gt[variant]))
    return out


def table_values(total: dict[str, Any], region: str, lpips: str, protocol: str) -> list[float | None]:
    """A system's table row (in COLUMNS order) from its total."""
    values = dict(total.get("metrics", {}))
    if protocol == "set":
        for variant in VARIANTS:
            values[variant] = total.get("fvd_set", {}).get(variant)
    suffix = "_fg" if region == "foreground" else ""
    return [values.get(key.format(lpips=lpips, region=suffix)) for _, key, _ in COLUMNS]


def _cell(value: float | None, decimals: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{decimals}f}"


def markdown_table(rows: Sequence[tuple[str, Sequence[float | None]]], caption: str = "") -> str:
    """The paper's layout: | Model | LPIPS↓ | ... | FV4D↓ |, one row per system."""
    header = "| Model | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [header, rule]
    for name, values in rows:
        cells = [_cell(v, d) for v, (_, _, d) in zip(values, COLUMNS)]
        lines.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return text + (f"\n{caption}\n" if caption else "")


def caption(
    region: str,
    lpips: str,
    protocol: str,
    counts: dict[str, tuple[int, int]],
    random_weights: bool,
    skipped: dict[str, str],
) -> str:
    """One paragraph: what the columns are and on how many objects."""
    parts = [
        f"PSNR/SSIM/MSE on the {'whole image' if region == 'whole' else 'foreground (ground-truth alpha)'}, "
        f"composited on white; LPIPS with {lpips.upper() if lpips == 'vgg' else 'AlexNet'}; "
        "FVD "
        + (
            "per video (each clip against its ground truth, averaged)."
            if protocol == "per_video"
            else "set-level (all clips of all objects)."
        ),
        "Objects evaluated / failed: "
        + "; ".join(f"{n}: {ok}/{bad}" for n, (ok, bad) in counts.items())
        + ".",
    ]
    if skipped:
        parts.append(
            "Not computed ('-'): " + "; ".join(f"{k} ({v})" for k, v in sorted(skipped.items())) + "."
        )
    if random_weights:
        parts.append(
            "LPIPS, CLIP-S and FVD come from tiny RANDOM networks (evaluation.tiny): they test the pipeline "
            "and are not comparable with the paper."
        )
    return " ".join(parts)
