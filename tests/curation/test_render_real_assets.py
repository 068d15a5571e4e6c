"""Issue 14 acceptance on procedural glTF files built to break the old render stage (needs bpy).

The files come from tests/gltf_assets.py: a unit cube and a bending cylinder (framing), a single- and a
double-sided plane seen from behind (glTF doubleSided), a box with two named actions (clip choice), a
cylinder that only moves in the second half of its take (most_motion).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.asset_task import process_asset
from curation.image_checks import touches_border
from curation.sources import AssetRecord
from profiles import load_profile
from tests.blender_scripts.test_blender_render import run_script, small_job
from tests.gltf_assets import (
    bent_cylinder_glb,
    orphan_skeleton_glb,
    plane_glb,
    two_actions_glb,
    unit_cube_glb,
)

pytestmark = pytest.mark.blender


def alphas(out: Path) -> dict[str, np.ndarray]:
    return {
        f"{p.parent.name}/{p.name}": np.asarray(Image.open(p))[..., 3] for p in sorted(out.glob("*/*.png"))
    }


def widest_fill(a: np.ndarray) -> float:
    """Largest distance of an alpha > 0 pixel edge from the image centre, along u or v, / half side."""
    rows, cols = np.nonzero(a)
    half = a.shape[0] / 2
    return max(np.abs(cols + 0.5 - half).max() + 0.5, np.abs(rows + 0.5 - half).max() + 0.5) / half


@pytest.mark.slow
def test_framing_keeps_cube_and_bending_cylinder_inside_every_image(tmp_path):
    fills = {}
    for name, data, kw in (
        ("cube", unit_cube_glb(), {"mode": "static"}),
        ("cylinder", bent_cylinder_glb(), {"num_frames": 4}),
    ):
        asset = tmp_path / f"{name}.glb"
        asset.write_bytes(data)
        out = tmp_path / name
        job = small_job(asset, out, resolution=48, samples=1, orbit={"num_views": 4}, **kw)
        proc = run_script("render_asset", job, tmp_path, f"{name}.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((out / "result.json").read_text())
        images = alphas(out)
        assert len(images) == (8 if name == "cube" else 32)
        touched = [k for k, a in images.items() if touches_border(a)]
        assert not touched, f"{name}: alpha on the border of {touched}"
        assert min(a.mean() for a in images.values()) > 0.02 * 255
        fills[name] = max(widest_fill(a) for a in images.values())
        # the old rule (largest extent 1) is bigger than what fits
        assert res["normalization"]["unit_extent_scale"] > res["normalization"]["scale"]
    # the widest image fills ~90% of the side, as the sampler's input crop (plus the pixel filter's reach)
    for name, fill in fills.items():
        assert 0.85 < fill <= 0.9 + 1.5 / 24, (name, fill)


def test_single_sided_plane_is_transparent_from_behind(tmp_path):
    cover = {}
    for double in (False, True):
        asset = tmp_path / f"plane{int(double)}.glb"
        asset.write_bytes(plane_glb(double))
        out = tmp_path / f"out{int(double)}"
        job = small_job(asset, out, mode="static", orbits=["static"], resolution=32, samples=1)
        job["render"]["orbit"]["num_views"] = 4  # azimuth 90 looks at the back (Blender -Y normal), 270 front
        proc = run_script("render_asset", job, tmp_path, f"p{int(double)}.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((out / "result.json").read_text())
        assert res["single_sided_materials"] == (0 if double else 1)
        a = alphas(out)
        cover[double] = {v: a[f"static/v{v:02d}_f00.png"].mean() / 255 for v in (1, 3)}
    assert cover[False][1] < 0.001, "back faces of a single-sided material must be transparent"
    assert cover[True][1] > 0.2 and cover[False][3] > 0.2 and cover[True][3] > 0.2
    assert cover[False][3] == pytest.approx(cover[True][3], abs=0.01)  # the front is as authored


def test_clip_choice_by_name_or_longest_lists_every_action(tmp_path):
    asset = tmp_path / "two.glb"
    asset.write_bytes(two_actions_glb())
    found = {}
    for action in (None, "bob", "nope"):
        out = tmp_path / f"an_{action}"
        job = small_job(asset, out, action=action, max_points=100)
        proc = run_script("analyze_asset", job, tmp_path, f"{action}.json")
        found[action] = (proc.returncode, json.loads((out / "analysis.json").read_text()))
    code, res = found[None]
    assert code == 0 and res["frames"]["action"] == "slide_long"  # the longest
    listed = {a["name"]: a["frame_range"] for a in res["frames"]["actions"]}
    assert listed == {"bob": [0.0, 24.0], "slide_long": [0.0, 48.0]}
    code, res = found["bob"]
    assert code == 0 and res["frames"]["action"] == "bob"
    assert res["frames"]["action_frame_range"] == [0.0, 24.0] and res["frames"]["actions_in_use"] == ["bob"]
    # bob moves along glTF +Y (Blender +Z) only: the box's Blender X extent stays the box's 0.6
    assert res["extent_xyz"][0] == pytest.approx(0.6, abs=1e-4) and res["extent_xyz"][2] > 0.4
    code, res = found["nope"]
    assert code == 3 and res["reason"] == "bad_clip" and "slide_long" in res["detail"]


def test_orphan_skeleton_root_is_detected_and_posed_as_viewers_show_it(tmp_path):
    asset = tmp_path / "orphan.glb"
    asset.write_bytes(orphan_skeleton_glb())
    found = {}
    for mode in ("gltf", "viewer"):
        out = tmp_path / mode
        proc = run_script(
            "analyze_asset", small_job(asset, out, mode="static", orphan_skeleton=mode), tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        found[mode] = json.loads((out / "analysis.json").read_text())
    for res in found.values():
        assert res["orphan_skeleton"] and res["orphan_skins"] == [0]
        assert res["orphan_skin_rotation_deg"] == pytest.approx(90.0)
    # the importer's (glTF rule) pose: lying, its 2 m height along Blender Y
    x, y, z = found["gltf"]["extent_xyz"]
    assert found["gltf"]["orphan_skeleton_pose"] is None
    assert y == pytest.approx(2.0, abs=1e-4) and z < 0.5
    # the viewers' pose: upright along Blender Z
    x, y, z = found["viewer"]["extent_xyz"]
    assert found["viewer"]["orphan_skeleton_pose"] == "applied"
    assert z == pytest.approx(2.0, abs=1e-4) and y < 0.5 and x == pytest.approx(0.4, abs=1e-4)


def _cfg(tmp_path, *sets):
    return load_profile(
        "demo",
        [
            f"out_dir={tmp_path}",
            "render.resolution=32",
            "render.num_frames=3",
            "render.orbits=[static]",
            "render.orbit.num_views=2",
            "render.samples=1",
            "render.threads=2",
            "curation.hdri.library_dir=''",
            *sets,
        ],
    )


def _record(tmp_path, name, data):
    path = tmp_path / f"{name}.glb"
    path.write_bytes(data)
    return AssetRecord(uid=name, source="local", path=str(path), license="CC-BY-4.0")


@pytest.mark.slow
def test_most_motion_picks_the_moving_half_of_the_take(tmp_path):
    rec = _record(tmp_path, "cyl", bent_cylinder_glb())
    rows = {}
    for select in ("longest", "most_motion"):
        cfg = _cfg(tmp_path, "render.clip_duration_s=1.0", f"render.clip.select={select}")
        rows[select] = process_asset(rec, cfg, tmp_path / select / "cyl")[0]
    moving = rows["most_motion"]
    assert moving["status"] == "rendered", moving
    assert moving["clip_start"] >= 1.5 * 24  # the take is still for its first 2 s
    assert moving["motion"] > 3 * (rows["longest"]["motion"] or 0.0)
    assert json.loads(moving["actions"]) == [{"name": "take", "frame_range": [0.0, 96.0]}]
    assert rows["longest"]["status"] == "filtered" and rows["longest"]["reason"] == "small_motion"


@pytest.mark.slow
def test_every_action_as_a_sample_and_fingerprint_rerenders(tmp_path):
    rec = _record(tmp_path, "box", two_actions_glb())
    cfg = _cfg(tmp_path, "render.clip.select=all", "curation.filters.min_motion=0")  # a rigid slide
    rows = process_asset(rec, cfg, tmp_path / "work" / "box")
    assert [r["uid"] for r in rows] == ["box-bob", "box-slide_long"]
    assert [r["action"] for r in rows] == ["bob", "slide_long"]
    assert all(r["status"] == "rendered" and r["border_images"] == 0 for r in rows), rows
    png = tmp_path / "work" / "box" / "clips" / "bob" / "static" / "v00_f00.png"
    assert Image.open(png).size == (32, 32)
    # the same settings again: nothing re-rendered
    mtime = png.stat().st_mtime_ns
    assert process_asset(rec, cfg, tmp_path / "work" / "box") == rows and png.stat().st_mtime_ns == mtime
    # a new resolution: the asset is rendered again, not repacked from the 32 px images
    cfg40 = _cfg(tmp_path, "render.clip.select=all", "curation.filters.min_motion=0", "render.resolution=40")
    rows40 = process_asset(rec, cfg40, tmp_path / "work" / "box")
    assert [r["status"] for r in rows40] == ["rendered", "rendered"]
    assert Image.open(png).size == (40, 40)
