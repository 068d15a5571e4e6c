"""The curation report on a fabricated manifest: counts, reasons, thresholds, PNGs, thumbnails, browser."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from curation.report import main, read_thresholds, write_report
from tests.browser import Chromium, require_chromium

ROWS = [
    # uid, status, reason, motion, scale_ratio, detail
    ("walker", "rendered", None, 0.08, 1.05, ""),
    ("morph", "rendered", None, 0.03, 1.2, ""),
    ("lamp", "rendered", None, 0.05, 1.0, ""),
    ("still_breeze", "filtered", "small_motion", 0.002, 1.01, "motion 0.002 < min_motion 0.01"),
    ("balloon", "filtered", "inconsistent_scale", 0.1, 3.0, "scale ratio 3 > max_scale_ratio 1.5"),
    ("statue", "filtered", "no_animation", None, None, "no action"),
    ("nc_bird", "filtered", "license", None, None, "license 'by-nc' not allowed"),
    ("broken", "failed", "bad_asset", None, None, "truncated glb"),
    ("cube_shrink", "filtered", "inconsistent_scale", 0.02, float("inf"), "scale ratio inf"),
]


def _manifests(out: Path) -> None:
    (out / "manifests").mkdir(parents=True)
    names = ("uid", "source", "status", "reason", "detail", "motion", "scale_ratio", "num_vertices",
             "num_faces", "num_images", "license", "hdri", "total_s")  # fmt: skip
    cols = {k: [] for k in names}
    for uid, status, reason, motion, scale, detail in ROWS:
        for k, v in (("uid", uid), ("source", "procedural"), ("status", status), ("reason", reason),
                     ("detail", detail), ("motion", motion), ("scale_ratio", scale), ("num_vertices", 1200),
                     ("num_faces", 2000), ("num_images", 72 if status == "rendered" else None),
                     ("license", "by-nc" if uid == "nc_bird" else "cc0"), ("hdri", "demo_00_overcast.hdr"),
                     ("total_s", 12.5)):  # fmt: skip
            cols[k].append(v)
    table = pa.table(cols)
    pq.write_table(table.slice(0, 5), out / "manifests" / "shard-000000.parquet")
    pq.write_table(table.slice(5), out / "manifests" / "shard-000001.parquet")


@pytest.fixture()
def out_dir(tmp_path):
    out = tmp_path / "run"
    _manifests(out)
    (out / "profile.yaml").write_text(
        yaml.safe_dump({"curation": {"filters": {"min_motion": 0.02, "max_scale_ratio": 1.8}}})
    )
    # a contact sheet for one rendered asset, a render shard for another, nothing for the third
    (out / "contact_sheets").mkdir()
    Image.fromarray(np.full((300, 1500, 3), 90, np.uint8)).save(out / "contact_sheets" / "walker.png")
    from shards.render_schema import encode_render_sample
    from shards.writer import ShardWriter
    from tests.synthetic import make_render_sample

    with ShardWriter(out / "renders" / "shard-000000.tar") as w:
        w.write(encode_render_sample(make_render_sample("morph", views=3, frames=4, res=16)))
    return out


def test_report_lists_counts_reasons_and_existing_pngs(out_dir):
    index = write_report(out_dir)
    text = index.read_text()
    assert index == out_dir / "report" / "index.html"
    # counts by status
    for status, n in (("rendered", 3), ("filtered", 5), ("failed", 1)):
        assert re.search(rf">{status}</span></td><td>{n}</td>", text), status
    # reasons with counts, and the filtered groups with their measured values
    for reason, n in (("small_motion", 1), ("inconsistent_scale", 2), ("no_animation", 1), ("license", 1)):
        assert f"<td>{reason}</td><td>{n}</td>" in text
        assert f"{reason} ({n})</h3>" in text
    assert "<span class='hit'>0.002</span>" in text and "<span class='hit'>inf</span>" in text
    assert "truncated glb" in text and "216 images rendered" in text
    # thresholds come from profile.yaml
    assert "min_motion = 0.02" in text and "max_scale_ratio = 1.8" in text
    # every referenced PNG exists and opens
    srcs = re.findall(r"<img src='([^']+)'", text)
    assert {
        "counts.png",
        "motion_hist.png",
        "scale_hist.png",
        "thumbs/walker.png",
        "thumbs/morph.png",
    } <= set(srcs)
    for src in srcs:
        with Image.open(index.parent / src) as img:
            assert img.width > 50 and img.height > 20
    with Image.open(index.parent / "thumbs" / "walker.png") as img:
        assert img.size == (640, 128)  # the contact sheet (not in any shard), downscaled
    assert "<a href='../contact_sheets/walker.png'>" in text
    with Image.open(index.parent / "thumbs" / "morph.png") as img:
        assert img.width == (4 + 2) * 74 + 2  # 4 frames of view 0 then views 1-2 of frame 0, from the shard
    assert "no contact sheet or shard sample found" in text  # lamp


def test_thresholds_fallback_and_cli(tmp_path, out_dir):
    assert read_thresholds(tmp_path, "demo")["source"] == "profile demo"
    (out_dir / "profile.yaml").unlink()
    assert main([str(out_dir)]) == 0
    assert "thresholds from profile demo" in (out_dir / "report" / "index.html").read_text()
    assert main([str(tmp_path / "empty")]) == 2


def _manifest_counts(out: Path) -> tuple[Counter, Counter]:
    """(assets by status, assets by (status, reason)) read straight from the manifests, not via the report."""
    rows = [
        r for path in sorted((out / "manifests").glob("*.parquet")) for r in pq.read_table(path).to_pylist()
    ]
    by_reason = Counter((r["status"], r["reason"]) for r in rows if r["reason"])
    return Counter(r["status"] for r in rows), by_reason


@pytest.fixture(scope="module")
def browser():
    with Chromium(require_chromium()) as chromium:
        yield chromium


@pytest.mark.slow
def test_report_renders_in_headless_chromium(browser, out_dir):
    """What a person checks on the page: no console errors, every image shown, the counts of the manifests,
    the charts drawn (their bar colours on the screenshot)."""
    index = write_report(out_dir)
    page = browser.load(index, width=1280, height=1000)
    check = page.check(out_dir / "report" / "screenshot.png", min_ink=0.05)
    assert check.problems == []
    images = page.images()
    assert {"counts.png", "motion_hist.png", "scale_hist.png", "thumbs/walker.png", "thumbs/morph.png"} == {
        img.src for img in images
    }
    assert all(img.width > 50 and img.height > 20 for img in images)
    by_status, by_reason = _manifest_counts(out_dir)
    counts = page.table("table.counts")
    assert counts[0] == ["status", "assets"]
    assert {status: int(n) for status, n in counts[1:]} == by_status
    assert len(counts) - 1 == len(by_status)  # no status twice
    reasons = page.table("table.reasons")
    assert {(s, reason): int(n) for s, reason, n in reasons[1:]} == by_reason
    img = check.screenshot.astype(int)
    assert img.shape[0] >= 2000 and img.shape[1] == 1280  # the whole page, not the first screen
    # pixels of the rendered (green) and filtered (orange) bars: the PNGs were loaded and drawn
    green = np.all(np.abs(img - [0x2E, 0x7D, 0x32]) < 12, axis=-1).sum()
    orange = np.all(np.abs(img - [0xEF, 0x6C, 0x00]) < 12, axis=-1).sum()
    assert green > 500 and orange > 500, (green, orange)
    page.close()


@pytest.mark.slow
def test_report_browser_check_fails_on_a_broken_report(browser, out_dir):
    """The same check on a damaged report: a histogram gone, a thumbnail corrupt, a script error."""
    index = write_report(out_dir)
    (index.parent / "motion_hist.png").unlink()
    (index.parent / "thumbs" / "walker.png").write_bytes(b"not a png")
    index.write_text(index.read_text().replace("</body>", "<script>console.error('bad row')</script></body>"))
    page = browser.load(index)
    check = page.check()
    assert check.broken_images == ["motion_hist.png", "thumbs/walker.png"]
    assert "console error: console.error: bad row" in check.problems
    assert any("ERR_FILE_NOT_FOUND" in p and "motion_hist.png" in p for p in check.problems)
    page.close()
