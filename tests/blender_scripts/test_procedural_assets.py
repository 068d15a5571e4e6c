"""The procedural asset generator: builds, exports and re-imports with its animation (needs bpy)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["walker", "morph", "articulated", "textured", "still_breeze", "balloon", "statue"]


def generate(out: Path, seed: int, *only: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "blender_scripts.procedural_assets", "--out", str(out), "--seed", str(seed)]
    if only:
        cmd += ["--only", *only]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def analyze(asset: Path, out: Path, mode: str = "4d", num_frames: int = 5) -> tuple[int, dict, dict | None]:
    job = {
        "uid": asset.stem,
        "asset_path": str(asset),
        "out_dir": str(out),
        "render": {"mode": mode, "num_frames": num_frames},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, "-m", "blender_scripts.analyze_asset", "--job", str(out / "job.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    info = json.loads((out / "analysis.json").read_text())
    data = dict(np.load(out / "analysis.npz")) if info["status"] == "ok" else None
    return proc.returncode, info, data


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("procedural")
    proc = generate(out, 0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    analyses = {e["name"]: analyze(out / e["file"], out / f"an_{e['name']}") for e in index}
    return out, index, analyses


def test_index_lists_every_asset(assets):
    out, index, _ = assets
    assert [e["name"] for e in index] == NAMES
    expected = {e["name"]: e["expected"] for e in index}
    assert expected["still_breeze"] == "small_motion" and expected["balloon"] == "inconsistent_scale"
    assert expected["statue"] == "static" and expected["walker"] == "render"
    for e in index:
        assert e["license"] == "cc0" and (out / e["file"]).stat().st_size > 0
        assert e["kind"] in {"skinned", "shape_key", "articulated", "textured", "rigid", "static"}


def relative_motion(data: dict) -> float:
    """Largest displacement of any vertex from frame 0, over the clip's largest bbox extent."""
    p = data["positions"].astype(np.float64)
    size = (data["bbox_max"].max(0) - data["bbox_min"].min(0)).max()
    return float(np.linalg.norm(p - p[:1], axis=-1).max() / size)


@pytest.mark.parametrize("name", ["walker", "morph", "articulated", "textured", "balloon"])
def test_animated_assets_move_after_reimport(assets, name):
    _, _, analyses = assets
    rc, info, data = analyses[name]
    assert rc == 0 and info["status"] == "ok" and info["has_animation"], info
    assert 24 <= info["frames"]["action_frame_range"][1] - info["frames"]["action_frame_range"][0] + 1 <= 48
    assert info["num_vertices"] <= 5000
    assert relative_motion(data) > 0.05, name


def test_walker_is_skinned_and_drifts(assets):
    _, _, analyses = assets
    _, info, data = analyses["walker"]
    assert info["num_meshes"] == 1  # the armature's bone-shape helper (if any) is excluded
    centre_x = data["positions"][..., 0].mean(1)
    body_length = data["bbox_max"][0, 0] - data["bbox_min"][0, 0]
    drift = centre_x[-1] - centre_x[0]
    assert 0.5 * body_length < drift < 1.2 * body_length
    # legs move relative to the body: the motion is not a pure translation
    rel = data["positions"] - data["positions"].mean(1, keepdims=True)
    assert np.abs(rel - rel[:1]).max() > 0.05 * body_length
    # the body, head and tail (everything above the hips, z > 0.65) are weighted to the body bone only:
    # they translate rigidly with the drift while the legs swing
    pos = data["positions"].astype(np.float64)
    upper = pos[0, :, 2] > 0.65
    assert upper.sum() > 50 and (~upper).sum() > 50
    disp = pos[:, upper] - pos[:1, upper]  # (F, P_upper, 3)
    assert np.abs(disp - disp.mean(1, keepdims=True)).max() < 1e-4


def test_morph_changes_shape_not_place(assets):
    _, _, analyses = assets
    _, _, data = analyses["morph"]
    ext = data["bbox_max"] - data["bbox_min"]
    assert ext.max(0).max() / ext.min(0).max() > 1.1  # the extents change: the shape keys play


def test_still_breeze_moves_but_tiny(assets):
    _, _, analyses = assets
    rc, info, data = analyses["still_breeze"]
    assert rc == 0 and info["has_animation"]
    assert 1e-5 < relative_motion(data) < 0.005


def test_balloon_scale_changes_strongly(assets):
    _, _, analyses = assets
    _, _, data = analyses["balloon"]
    ext = (data["bbox_max"] - data["bbox_min"]).max(1)
    assert ext[-1] / ext[0] > 2.5


def test_statue_has_no_animation(assets, tmp_path):
    out, _, analyses = assets
    rc, info, data = analyses["statue"]
    assert rc == 3 and info["reason"] == "no_animation" and info["has_animation"] is False
    assert info["num_vertices"] > 0
    rc, info, data = analyze(out / "statue.glb", tmp_path / "static", mode="static")
    assert rc == 0 and not info["has_animation"] and data["positions"].shape[0] == 1


def glb_content(path: Path) -> tuple:
    """A GLB's JSON and buffer views, with index buffers as sorted triangle lists.

    Blender's glTF exporter writes the same triangles in a run-dependent order, so the bytes of the index
    buffers are not reproducible, while the set of triangles (and everything else) is.
    """
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<I", raw[12:16])[0]
    gltf = json.loads(raw[20 : 20 + n])
    binary = raw[20 + n + 8 :]
    index_dtype = {
        a["bufferView"]: {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[a["componentType"]]
        for m in gltf.get("meshes", [])
        for prim in m["primitives"]
        if "indices" in prim
        for a in [gltf["accessors"][prim["indices"]]]
    }
    views = []
    for i, bv in enumerate(gltf["bufferViews"]):
        start = bv.get("byteOffset", 0)
        chunk = binary[start : start + bv["byteLength"]]
        if i in index_dtype:
            tris = np.frombuffer(chunk, index_dtype[i]).reshape(-1, 3)
            tris = np.array([np.roll(t, -int(np.argmin(t))) for t in tris])  # same winding, canonical start
            chunk = tris[np.lexsort(tris.T[::-1])].tobytes()
        views.append(chunk)
    return json.dumps(gltf, sort_keys=True), views


def test_same_seed_same_assets(assets, tmp_path):
    out, _, _ = assets
    assert generate(tmp_path / "a", 0, "morph", "articulated").returncode == 0
    assert generate(tmp_path / "b", 1, "morph").returncode == 0
    for name in ("morph", "articulated"):
        assert glb_content(tmp_path / "a" / f"{name}.glb") == glb_content(out / f"{name}.glb"), name
    assert glb_content(tmp_path / "b" / "morph.glb") != glb_content(out / "morph.glb")
    assert [e["name"] for e in json.loads((tmp_path / "a" / "index.json").read_text())] == [
        "morph",
        "articulated",
    ]


def test_unknown_name_is_rejected(tmp_path):
    proc = generate(tmp_path, 0, "unicorn")
    assert proc.returncode == 2 and "unicorn" in proc.stderr


CONVERT = """
import bpy, os, sys
src, stem = sys.argv[1], sys.argv[2]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=src)
bpy.ops.export_scene.gltf(
    filepath=stem + ".gltf", export_format="GLTF_SEPARATE", export_animation_mode="ACTIVE_ACTIONS"
)
bpy.ops.export_scene.fbx(filepath=stem + ".fbx", bake_anim=True)
bpy.ops.wm.obj_export(filepath=stem + ".obj")
bpy.ops.wm.save_as_mainfile(filepath=stem + ".blend")
sys.stdout.flush()
os._exit(0)
"""


def test_other_formats_import_with_their_animation(assets, tmp_path):
    out, _, analyses = assets
    stem = tmp_path / "articulated"
    proc = subprocess.run(
        [sys.executable, "-c", CONVERT, str(out / "articulated.glb"), str(stem)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = analyses["articulated"][1]["num_vertices"]
    for ext, animated in ((".gltf", True), (".fbx", True), (".blend", True), (".obj", False)):
        rc, info, data = analyze(stem.with_suffix(ext), tmp_path / f"an{ext}")
        assert info["num_vertices"] == reference, ext
        if animated:
            assert rc == 0 and info["has_animation"] and relative_motion(data) > 0.05, (ext, info)
        else:  # OBJ has no animation
            assert rc == 3 and info["reason"] == "no_animation"
