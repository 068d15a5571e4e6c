"""The curation report: `python -m curation.report OUT_DIR` writes OUT_DIR/report/index.html and its PNGs.

Contents: counts by status and by reason (table and bar chart), histograms of the motion magnitude and of
the scale ratio over all measured assets with the filter thresholds drawn, a thumbnail strip per rendered
asset, the filtered assets grouped by reason with their measured values, and the failures.

Inputs: the manifests OUT_DIR/manifests/shard-*.parquet (columns used: uid, source, status, reason, detail,
motion, scale_ratio, clip_frames, num_vertices, num_faces, num_images, license, hdri, total_s; missing ones
read as empty); thresholds from OUT_DIR/profile.yaml (written by curation.render) or else the profile named
by --profile (default: demo). Thumbnails: OUT_DIR/contact_sheets/{uid}.png when present (downscaled), else
built from the render shards OUT_DIR/renders*/shard-*.tar (view 0 over the frames, then frame 0 over the
views, of the first orbit).

Browser check: tests/test_report.py::test_report_renders_in_headless_chromium lays the page out in headless
Chromium (Debian: `apt-get install -y chromium`) and checks the screenshot shows the charts; it skips, saying
why, where no chromium is installed. By hand:
    chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=$(mktemp -d) \
        --window-size=1280,2400 --screenshot=/tmp/report.png file://$PWD/OUT_DIR/report/index.html
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import logging
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

log = logging.getLogger("curation.report")

STATUS_ORDER = ("rendered", "filtered", "failed", "skipped")
STATUS_COLOURS = {"rendered": "#2e7d32", "filtered": "#ef6c00", "failed": "#c62828", "skipped": "#757575"}
THUMB = 72
SHEET_MAX_WIDTH = 640
SHEET_MAX_HEIGHT = 240


# ------------------------------------------------------------------------------------------------ inputs


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    """All rows of OUT_DIR/manifests/shard-*.parquet, in shard order."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    from shards.layout import render_manifests

    for path in render_manifests(out_dir):
        try:
            table = pq.read_table(path)
        except Exception as exc:  # a damaged manifest should not hide the others
            log.warning("skipping unreadable manifest %s: %s", path, exc)
            continue
        for row in table.to_pylist():
            row["_manifest"] = path.name
            rows.append(row)
    return rows


def read_thresholds(out_dir: Path, profile: str = "demo") -> dict[str, float]:
    """{"min_motion", "max_scale_ratio", "source"} from OUT_DIR/profile.yaml, else from the named profile."""
    path = out_dir / "profile.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
            filters = (data.get("curation") or {}).get("filters") or {}
            from profiles.schema import FilterConfig

            default = FilterConfig()
            return {
                "min_motion": float(filters.get("min_motion", default.min_motion)),
                "max_scale_ratio": float(filters.get("max_scale_ratio", default.max_scale_ratio)),
                "source": str(path),
            }
        except (yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
            log.warning("cannot read thresholds from %s (%s); using profile %r", path, exc, profile)
    from profiles import load_profile

    f = load_profile(profile).curation.filters
    return {"min_motion": f.min_motion, "max_scale_ratio": f.max_scale_ratio, "source": f"profile {profile}"}


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------------------------ plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_counts(rows: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars: one per status (rendered) or status/reason, coloured by status."""
    plt = _plt()
    counts = Counter((r.get("status") or "?", r.get("reason") or "") for r in rows)
    keys = sorted(counts, key=lambda k: (STATUS_ORDER.index(k[0]) if k[0] in STATUS_ORDER else 9, k[1]))
    labels = [f"{s}: {reason}" if reason else s for s, reason in keys]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(keys) + 1.0), dpi=100)
    bars = ax.barh(
        range(len(keys)), [counts[k] for k in keys], color=[STATUS_COLOURS.get(k[0], "#444") for k in keys]
    )
    ax.bar_label(bars, padding=3)
    ax.set_yticks(range(len(keys)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("assets")
    ax.set_title(f"{len(rows)} assets by status and reason")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_histogram(
    rows: list[dict[str, Any]], column: str, threshold: float, side: str, title: str, xlabel: str, path: Path
) -> Path:
    """Stacked histogram of `column` by status on a log axis, the threshold as a dashed line; the filtered
    side of the threshold is shaded (side: "below" or "above")."""
    plt = _plt()
    by_status: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        v = _num(r.get(column))
        if v is not None:
            by_status[r.get("status") or "?"].append(v)
    values = [v for vs in by_status.values() for v in vs]
    finite_pos = [v for v in values if v > 0 and math.isfinite(v)]
    lo = min(finite_pos + [threshold]) / 1.5
    hi = max(finite_pos + [threshold]) * 1.5
    if column == "scale_ratio":
        lo = max(lo, 0.95)
    bins = np.geomspace(lo, hi, 30)
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    statuses = [s for s in STATUS_ORDER if by_status.get(s)] + [s for s in by_status if s not in STATUS_ORDER]
    if statuses:
        data = [np.clip(by_status[s], lo, hi) for s in statuses]  # 0 and inf land in the edge bins
        ax.hist(
            data,
            bins=bins,
            stacked=True,
            label=statuses,
            color=[STATUS_COLOURS.get(s, "#444") for s in statuses],
        )
    ax.set_xscale("log")
    from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator, ScalarFormatter

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if hi / lo < 100:  # a narrow range (the scale ratio) reads better as plain numbers
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
    else:
        ax.xaxis.set_major_formatter(LogFormatterSciNotation())
    clipped = sum(1 for v in values if not lo <= v <= hi)
    if side == "below":
        ax.axvspan(lo, threshold, color="#ef6c00", alpha=0.08)
    else:
        ax.axvspan(threshold, hi, color="#ef6c00", alpha=0.08)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1.5, label=f"threshold {threshold:g}")
    ax.set_xlim(lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("assets")
    note = f"; {clipped} outside (0 or inf) drawn at the edges" if clipped else ""
    ax.set_title(f"{title} ({len(values)} measured{note})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ thumbnails


def _strip(tiles: list[np.ndarray], thumb: int = THUMB) -> Image.Image:
    """RGBA uint8 tiles composited on white, in one row."""
    from shards.contact_sheet import composite

    strip = Image.new("RGB", (len(tiles) * (thumb + 2) + 2, thumb + 4), (40, 40, 40))
    for i, rgba in enumerate(tiles):
        img = Image.fromarray(composite(rgba, background="white")).resize((thumb, thumb), Image.BILINEAR)
        strip.paste(img, (2 + i * (thumb + 2), 2))
    return strip


def _tiles_from_raw(raw: dict[str, Any], max_tiles: int = 8) -> list[np.ndarray]:
    """View 0 over the frames, then frame 0 over the other views, of the first orbit; decodes only those
    PNGs (a paper-scale sample holds more than 1000 images)."""
    import io
    import json

    from shards.render_schema import image_field

    meta = json.loads(raw["meta.json"])
    orbit = meta["orbits"][0]
    V, F = int(meta["num_views"]), int(meta["num_frames"])
    names = [image_field(orbit, 0, f) for f in range(min(F, max_tiles))]
    names += [image_field(orbit, v, 0) for v in range(1, min(V, max_tiles))]
    tiles = []
    for name in names:
        with Image.open(io.BytesIO(raw[name])) as img:
            tiles.append(np.asarray(img.convert("RGBA")))
    return tiles


def build_thumbnails(
    out_dir: Path, uids: list[str], thumb_dir: Path, max_thumbnails: int = 200
) -> dict[str, dict[str, str | None]]:
    """uid -> {"src": thumbnail PNG relative to the report folder, "origin": note, "sheet": the asset's
    contact sheet relative to the report folder or None}, for at most `max_thumbnails` rendered assets.

    Strips come from the render shards (view 0 over the frames, frame 0 over the views); an asset found
    in no shard gets the top of its contact sheet, downscaled.
    """
    thumb_dir.mkdir(parents=True, exist_ok=True)
    uids = sorted(uids)[:max_thumbnails]
    sheets = {p.stem: p for p in sorted((out_dir / "contact_sheets").glob("*.png"))}
    found: dict[str, dict[str, str | None]] = {}

    def sheet_rel(uid: str) -> str | None:
        return f"../contact_sheets/{sheets[uid].name}" if uid in sheets else None

    missing = set(uids)
    try:
        from shards.layout import RENDERS, SHARD_GLOB
        from shards.reader import iter_raw_samples
    except ImportError as exc:
        log.warning("no shards reader (%s): thumbnails come from contact sheets only", exc)
        iter_raw_samples = None
    shards = sorted(out_dir.glob(f"{RENDERS}*/{SHARD_GLOB}")) if iter_raw_samples else []
    for shard in shards:
        if not missing:
            break
        try:
            for raw in iter_raw_samples(shard):
                key = raw["__key__"].rsplit("/", 1)[-1]
                uid = key if key in missing else next((u for u in sorted(missing) if key.startswith(u)), None)
                if uid is None:
                    continue
                try:
                    _strip(_tiles_from_raw(raw)).save(thumb_dir / f"{uid}.png")
                except (KeyError, ValueError, OSError) as exc:
                    log.warning("sample %s of %s: no thumbnail (%s)", key, shard.name, exc)
                    continue
                found[uid] = {
                    "src": f"thumbs/{uid}.png",
                    "origin": f"shard {shard.name}",
                    "sheet": sheet_rel(uid),
                }
                missing.discard(uid)
        except Exception as exc:  # a bad shard costs its thumbnails, not the report
            log.warning("cannot read thumbnails from %s: %s", shard, exc)
    for uid in sorted(missing & set(sheets)):
        try:
            with Image.open(sheets[uid]) as img:
                img = img.convert("RGB")
                scale = min(1.0, SHEET_MAX_WIDTH / img.width)
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
                img.crop((0, 0, img.width, min(img.height, SHEET_MAX_HEIGHT))).save(thumb_dir / f"{uid}.png")
            found[uid] = {
                "src": f"thumbs/{uid}.png",
                "origin": "contact sheet (top)",
                "sheet": sheet_rel(uid),
            }
        except OSError as exc:
            log.warning("unreadable contact sheet %s: %s", sheets[uid], exc)
    return found


# ------------------------------------------------------------------------------------------------ html


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        if math.isnan(value):
            return "&ndash;"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { margin-bottom: 4px; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; }
span.rendered { color: #2e7d32; } span.filtered { color: #ef6c00; } span.failed { color: #c62828; }
.plots img { max-width: 100%; margin: 4px 12px 12px 0; border: 1px solid #ddd; }
.asset { margin: 10px 0 18px; } .asset img { display: block; margin-top: 4px; border: 1px solid #ddd; }
.hit { font-weight: bold; color: #ef6c00; }
"""

#: the measured column that decided each filter reason (highlighted in its table)
REASON_COLUMN = {
    "small_motion": "motion",
    "inconsistent_scale": "scale_ratio",
    "clip_too_short": "clip_frames",
    "too_many_vertices": "num_vertices",
    "too_many_faces": "num_faces",
    "license": "license",
    "border_touch": "border_images",
    "transparent_image": "transparent_images",
    "orphan_skeleton": "orphan_skeleton",
}


def write_report(out_dir: Path, profile: str = "demo", max_thumbnails: int = 200) -> Path:
    """Write OUT_DIR/report/index.html (+ PNGs); returns its path. Raises FileNotFoundError when there is
    no manifest."""
    out_dir = Path(out_dir)
    rows = read_manifests(out_dir)
    if not rows:
        raise FileNotFoundError(f"no manifests at {out_dir / 'manifests' / 'shard-*.parquet'}")
    report = out_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    thr = read_thresholds(out_dir, profile)

    plot_counts(rows, report / "counts.png")
    plot_histogram(
        rows, "motion", thr["min_motion"], "below", "Motion after global-motion correction",
        "mean per-vertex displacement / object size", report / "motion_hist.png",
    )  # fmt: skip
    plot_histogram(
        rows, "scale_ratio", thr["max_scale_ratio"], "above", "Scale consistency",
        "max / min object size (radius of gyration) over the clip", report / "scale_hist.png",
    )  # fmt: skip

    status_counts = Counter(r.get("status") or "?" for r in rows)
    reason_counts = Counter((r.get("status") or "?", r.get("reason") or "") for r in rows if r.get("reason"))
    rendered = sorted((r for r in rows if r.get("status") == "rendered"), key=lambda r: r["uid"])
    thumbs = build_thumbnails(out_dir, [r["uid"] for r in rendered], report / "thumbs", max_thumbnails)

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Curation report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Curation report</h1>",
        f"<p class='sub'>{html.escape(str(out_dir.resolve()))} &middot; {len(rows)} assets from "
        f"{len({r['_manifest'] for r in rows})} manifest(s) &middot; "
        f"thresholds from {html.escape(thr['source'])}: "
        f"min_motion = {thr['min_motion']:g}, max_scale_ratio = {thr['max_scale_ratio']:g} &middot; "
        f"generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
        "<h2>Counts</h2>",
    ]
    ordered = [s for s in STATUS_ORDER if s in status_counts] + sorted(set(status_counts) - set(STATUS_ORDER))
    parts.append(
        _table(
            ["status", "assets"],
            [
                [f"<span class='{html.escape(s)}'>{html.escape(s)}</span>", str(status_counts[s])]
                for s in ordered
            ],
            "counts",
        )
    )
    if reason_counts:
        parts.append(
            _table(
                ["status", "reason", "assets"],
                [
                    [html.escape(s), html.escape(reason), str(n)]
                    for (s, reason), n in sorted(reason_counts.items())
                ],
                "reasons",
            )
        )
    images = sum(int(r.get("num_images") or 0) for r in rendered)
    total_s = sum(_num(r.get("total_s")) or 0.0 for r in rows)
    parts.append(f"<p>{images} images rendered; {total_s:.1f} s of asset time in total.</p>")
    parts.append("<div class='plots'>")
    for name, alt in (
        ("counts.png", "assets by status and reason"),
        ("motion_hist.png", "histogram of motion with the min_motion threshold"),
        ("scale_hist.png", "histogram of scale ratio with the max_scale_ratio threshold"),
    ):
        parts.append(f"<img src='{name}' alt='{alt}'>")
    parts.append("</div>")

    parts.append(f"<h2>Rendered ({len(rendered)})</h2>")
    for r in rendered:
        facts = (
            f"source {_fmt(r.get('source'))}, license {_fmt(r.get('license'))}, "
            f"motion {_fmt(_num(r.get('motion')))}, "
            f"scale ratio {_fmt(_num(r.get('scale_ratio')))}, {_fmt(r.get('num_images'))} images, "
            f"lighting {_fmt(r.get('hdri') or 'sky')}, {_fmt(_num(r.get('total_s')), 3)} s"
        )
        parts.append(f"<div class='asset'><b>{html.escape(r['uid'])}</b> &middot; {facts}")
        if r["uid"] in thumbs:
            t = thumbs[r["uid"]]
            alt = f"thumbnails of {html.escape(r['uid'])}"
            img = f"<img src='{t['src']}' alt='{alt}' title='{html.escape(t['origin'] or '')}'>"
            parts.append(f"<a href='{t['sheet']}'>{img}</a> (full contact sheet)" if t["sheet"] else img)
        elif len(rendered) > max_thumbnails:
            parts.append(f"<i>(thumbnails are shown for the first {max_thumbnails} rendered assets)</i>")
        else:
            parts.append("<i>(no contact sheet or shard sample found)</i>")
        parts.append("</div>")

    filtered = [r for r in rows if r.get("status") == "filtered"]
    parts.append(f"<h2>Filtered ({len(filtered)}), by reason</h2>")
    cols = ["motion", "scale_ratio", "clip_frames", "num_vertices", "num_faces", "license"]
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in filtered:
        by_reason[r.get("reason") or "(none)"].append(r)
    for reason in sorted(by_reason):
        group = sorted(by_reason[reason], key=lambda r: r["uid"])
        hit = REASON_COLUMN.get(reason)
        table_rows = []
        for r in group:
            cells = [html.escape(r["uid"]), _fmt(r.get("source"))]
            for c in cols:
                v = r.get(c)
                text = _fmt(_num(v) if c != "license" else v)
                cells.append(f"<span class='hit'>{text}</span>" if c == hit else text)
            cells.append(_fmt(r.get("detail")))
            table_rows.append(cells)
        parts.append(f"<h3 id='reason-{html.escape(reason)}'>{html.escape(reason)} ({len(group)})</h3>")
        parts.append(_table(["uid", "source", *cols, "detail"], table_rows, "filtered"))

    for status in ("failed", "skipped"):
        group = sorted((r for r in rows if r.get("status") == status), key=lambda r: r["uid"])
        if group:
            parts.append(f"<h2>{status.capitalize()} ({len(group)})</h2>")
            parts.append(
                _table(
                    ["uid", "source", "reason", "detail"],
                    [
                        [
                            html.escape(r["uid"]),
                            _fmt(r.get("source")),
                            _fmt(r.get("reason")),
                            _fmt(r.get("detail")),
                        ]
                        for r in group
                    ],
                    status,
                )
            )
    parts.append("</body></html>")
    index = report / "index.html"
    tmp = report / ".index.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(index)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curation.report",
        description="Write OUT_DIR/report/index.html: counts by status and reason, motion and "
        "scale-ratio histograms with the filter thresholds, thumbnails of the rendered assets, "
        "filtered assets by reason.",
    )
    parser.add_argument(
        "out_dir", type=Path, help="a pipeline output folder (with manifests/shard-*.parquet)"
    )
    parser.add_argument(
        "--profile",
        default="demo",
        help="profile whose thresholds are drawn when OUT_DIR/profile.yaml is absent (default: demo)",
    )
    parser.add_argument(
        "--max-thumbnails", type=int, default=200, help="thumbnail strips for at most this many assets (200)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        index = write_report(args.out_dir, args.profile, args.max_thumbnails)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
