"""render_asset / analyze_asset run as subprocesses exactly as the orchestrator runs them (needs bpy)."""

import dataclasses
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_scripts.cameras import intrinsics, project, static_orbit
from profiles.schema import RenderConfig

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[2]
SHARED_ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets"
FOX = SHARED_ASSETS / "Fox.glb"


def run_script(module: str, job: dict, tmp_path: Path, name: str = "job.json") -> subprocess.CompletedProcess:
    job_path = tmp_path / name
    job_path.write_text(json.dumps(job))
    return subprocess.run(
        [sys.executable, "-m", f"blender_scripts.{module}", "--job", str(job_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def glb_bytes(gltf: dict, binary: bytes = b"") -> bytes:
    """A GLB container for a glTF JSON dict and an optional binary buffer."""
    js = json.dumps(gltf).encode()
    js += b" " * (-len(js) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<I4s", len(js), b"JSON") + js
    if binary:
        chunks += struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def tetrahedron_glb() -> bytes:
    """One static tetrahedron mesh, no animation."""
    pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    idx = np.array([0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3], dtype=np.uint16)
    binary = pos.tobytes() + idx.tobytes()
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "tetra"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(binary) + (-len(binary) % 4)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": pos.nbytes},
            {"buffer": 0, "byteOffset": pos.nbytes, "byteLength": idx.nbytes},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": 4,
                "type": "VEC3",
                "min": [0, 0, 0],
                "max": [1, 1, 1],
            },
            {"bufferView": 1, "componentType": 5123, "count": 12, "type": "SCALAR"},
        ],
    }
    return glb_bytes(gltf, binary)


RENDER_KEYS = {f.name for f in dataclasses.fields(RenderConfig)}


def small_job(asset: Path, out_dir: Path, **kw) -> dict:
    """A job as the orchestrator writes it: cfg.render plus the per-asset fields; kw may set either."""
    render = {
        "mode": "4d",
        "resolution": 64,
        "num_frames": 3,
        "orbits": ["static", "dynamic"],
        "orbit": {"num_views": 3, "radius": 2.0, "fov_deg": 33.8},
        "samples": 4,
        "denoiser": "none",
        "device": "CPU",
        "threads": 2,
    }
    job = {
        "uid": asset.stem,
        "asset_path": str(asset),
        "out_dir": str(out_dir),
        "seed": 5,
        "environment": {"kind": "sky", "strength": 1.0},
        "render": render,
    }
    for k, v in kw.items():
        (render if k in RENDER_KEYS else job)[k] = v
    return job


@pytest.fixture(scope="module")
def fox_render(tmp_path_factory):
    if not FOX.is_file():
        pytest.fail(f"missing {FOX}: ../shared/assets must sit beside the checkout")
    tmp = tmp_path_factory.mktemp("fox")
    out = tmp / "out"
    proc = run_script("render_asset", small_job(FOX, out, uid="fox"), tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "result.json").read_text()), proc


def alpha(path: Path) -> np.ndarray:
    img = np.array(Image.open(path))
    assert img.shape == (64, 64, 4) and img.dtype == np.uint8
    return img[..., 3].astype(np.float64) / 255.0


def test_fox_result_metadata(fox_render):
    out, res, proc = fox_render
    assert res["status"] == "ok" and res["blender_version"].startswith("4.5")
    # the importer's 'Icosphere' bone-shape helper is not part of the asset
    assert res["num_meshes"] == 1 and res["mesh_names"] == ["fox1"]
    assert res["num_vertices"] == 1728
    fr = res["frames"]
    assert fr["action"] == "Armature|Take 001|BaseLayer" and len(fr["source_frames"]) == 3
    assert fr["source_frames"][0] == pytest.approx(fr["action_frame_range"][0])
    np.testing.assert_allclose(res["K"], intrinsics(33.8, 64))
    np.testing.assert_allclose(res["cameras"]["static"]["c2w"], static_orbit(3, 10.0, 2.0).c2w)
    for orbit in ("static", "dynamic"):
        for c2w in res["cameras"][orbit]["c2w"]:
            np.testing.assert_allclose(
                project(np.zeros(3), np.array(c2w), np.array(res["K"])), [32, 32], atol=1e-6
            )
    assert res["timings"]["images"] == 18
    # per-image progress for the orchestrator, and a log line per image
    progress = json.loads((out / "progress.json").read_text())
    assert progress["images_done"] == progress["images_total"] == 18
    assert "image 18/18" in proc.stderr
    # Cycles' chatter goes to the per-asset log, not to the process output
    assert "Fra:" in (out / "blender.log").read_text()
    assert "Fra:" not in proc.stdout + proc.stderr


def test_fox_images_centred_inside_and_animated(fox_render):
    out, res, _ = fox_render
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for orbit in ("static", "dynamic"):
        for v in range(3):
            masks = []
            for f in range(3):
                a = alpha(out / orbit / f"v{v:02d}_f{f:02d}.png")
                assert a.mean() > 0.01, f"{orbit} v{v} f{f}: almost empty"
                border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
                assert border.max() <= 2 / 255, f"{orbit} v{v} f{f}: object touches the border"
                cx, cy = (a * xx).sum() / a.sum(), (a * yy).sum() / a.sum()
                assert abs(cx - 32) < 0.15 * 64 and abs(cy - 32) < 0.15 * 64, (orbit, v, f, cx, cy)
                masks.append(a > 0.5)
            for f in range(2):  # the animation plays: silhouettes differ between frames of one view
                inter = (masks[f] & masks[f + 1]).sum()
                union = (masks[f] | masks[f + 1]).sum()
                assert inter / union < 0.95, f"{orbit} v{v}: frames {f} and {f + 1} look the same"


def test_analysis_matches_render_frames(fox_render, tmp_path):
    _, res, _ = fox_render
    out = tmp_path / "an"
    proc = run_script("analyze_asset", small_job(FOX, out, uid="fox", max_points=500), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "analysis.json").read_text())
    assert info["status"] == "ok" and info["has_animation"] and info["num_vertices"] == 1728
    assert info["frames"]["source_frames"] == res["frames"]["source_frames"]
    data = np.load(out / "analysis.npz")
    assert data["positions"].shape == (3, 500, 3) and data["positions"].dtype == np.float32
    # the render's centre is the union bbox over the clip; the unit-extent scale is recorded beside the
    # framing scale that the render uses
    lo, hi = data["bbox_min"].min(0), data["bbox_max"].max(0)
    norm = res["normalization"]
    assert norm["rule"] == "framing" and norm["fill"] == 0.9
    assert norm["unit_extent_scale"] == pytest.approx(1 / (hi - lo).max(), rel=1e-5)
    np.testing.assert_allclose(norm["offset"], -(lo + hi) / 2, atol=1e-5)
    assert (data["positions"].min(1) >= data["bbox_min"] - 1e-5).all()


BAD_CASES = {
    "truncated": ("fox_truncated.glb", lambda: FOX.read_bytes()[:50_000], "import_error"),
    "zero_byte": ("zero.glb", lambda: b"", "empty_file"),
    "garbage": ("garbage.glb", lambda: b"glTF" + bytes(range(256)) * 4, "import_error"),
    "no_mesh": (
        "empty_only.glb",
        lambda: glb_bytes(
            {"asset": {"version": "2.0"}, "scenes": [{"nodes": [0]}], "nodes": [{"name": "e"}]}
        ),
        "no_mesh",
    ),
    "no_animation": ("tetra.glb", tetrahedron_glb, "no_animation"),
    "unsupported": ("model.txt", lambda: b"hello", "unsupported_format"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_assets_are_recorded_failures(case, tmp_path):
    fname, make, reason = BAD_CASES[case]
    asset = tmp_path / fname
    asset.write_bytes(make())
    for module, result_name in (("render_asset", "result.json"), ("analyze_asset", "analysis.json")):
        out = tmp_path / module
        proc = run_script(module, small_job(asset, out), tmp_path, f"{module}.json")
        assert proc.returncode == 3, (module, proc.returncode, proc.stderr[-2000:])
        res = json.loads((out / result_name).read_text())
        assert res["status"] == "failed" and res["reason"] == reason, (module, res)
        assert not list(out.glob("*/*.png"))


def test_static_mode_renders_one_frame_of_a_static_mesh(tmp_path):
    asset = tmp_path / "tetra.glb"
    asset.write_bytes(tetrahedron_glb())
    out = tmp_path / "out"
    job = small_job(asset, out, mode="static", orbits=["static"], orbit={"num_views": 2})
    proc = run_script("render_asset", job, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["num_vertices"] >= 4 and len(res["frames"]["source_frames"]) == 1
    assert sorted(p.name for p in (out / "static").iterdir()) == ["v00_f00.png", "v01_f00.png"]
    assert res["normalization"]["unit_extent_scale"] == pytest.approx(1.0)
    assert alpha(out / "static" / "v00_f00.png").mean() > 0.01


def test_bad_job_exits_2_and_help_exits_0(tmp_path):
    proc = run_script("render_asset", small_job(FOX, tmp_path / "o", mode="5d"), tmp_path)
    assert proc.returncode == 2 and "mode" in proc.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "blender_scripts.render_asset", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert helped.returncode == 0 and "JOB.json" in helped.stdout


def alpha_centroid(a: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]] + 0.5
    return np.array([(a * xx).sum() / a.sum(), (a * yy).sum() / a.sum()])


def test_global_offsets_counter_translate_the_asset(tmp_path):
    # two nearly identical poses (a 0.01 s clip); the second frame is shifted by 1 world unit along +Y
    offsets = [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    job = small_job(
        FOX, tmp_path / "out", num_frames=2, clip_duration_s=0.01, orbits=["static"], global_offsets=offsets
    )
    job["render"]["orbit"]["num_views"] = 1  # azimuth 0: the camera on +X, image right = world +Y
    proc = run_script("render_asset", job, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["global_offsets"] == offsets
    scale = res["normalization"]["scale"]
    c2w, K = np.array(res["cameras"]["static"]["c2w"][0]), np.array(res["K"])
    expected = project(np.array([0.0, -scale, 0.0]), c2w, K) - project(np.zeros(3), c2w, K)
    c0 = alpha_centroid(alpha(tmp_path / "out" / "static" / "v00_f00.png"))
    c1 = alpha_centroid(alpha(tmp_path / "out" / "static" / "v00_f01.png"))
    assert expected[0] < -5  # a visible shift to the left
    np.testing.assert_allclose(c1 - c0, expected, atol=1.5)


def write_hdr(path: Path, rgb: np.ndarray) -> None:
    """A flat (uncompressed) Radiance RGBE .hdr file from float RGB (H, W, 3)."""
    h, w, _ = rgb.shape
    peak = rgb.max(axis=-1)
    exp = np.where(peak > 1e-32, np.floor(np.log2(np.maximum(peak, 1e-32))) + 1, 0)
    mant = np.where(peak[..., None] > 1e-32, rgb / np.exp2(exp)[..., None] * 256, 0)
    rgbe = np.concatenate([np.clip(mant, 0, 255), np.where(peak > 1e-32, exp + 128, 0)[..., None]], -1)
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode()
    path.write_bytes(header + rgbe.astype(np.uint8).tobytes())


def test_hdri_environment_rotation_moves_the_light(tmp_path):
    hdr = tmp_path / "half.hdr"
    env = np.full((16, 32, 3), 0.05, dtype=np.float64)
    env[:, :16] = 2.0  # one half of the azimuths bright
    write_hdr(hdr, env)
    asset = tmp_path / "tetra.glb"
    asset.write_bytes(tetrahedron_glb())
    means = []
    for rot in (0.0, 180.0):
        out = tmp_path / f"rot{rot:.0f}"
        environment = {"kind": "hdri", "path": str(hdr), "rotation_deg": rot, "strength": 1.0}
        job = small_job(
            asset, out, mode="static", orbits=["static"], orbit={"num_views": 1}, environment=environment
        )
        proc = run_script("render_asset", job, tmp_path, f"job{rot:.0f}.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((out / "result.json").read_text())
        assert res["environment"]["rotation_deg"] == rot and res["environment"]["image_size"] == [32, 16]
        img = np.array(Image.open(out / "static" / "v00_f00.png")).astype(np.float64)
        mask = img[..., 3] > 250
        means.append(img[mask, :3].mean())
    assert abs(means[0] - means[1]) > 20, means


def test_render_border_crop_changes_no_pixel(fox_render, tmp_path):
    out_crop, res, _ = fox_render
    assert res["render_settings"]["crop_border"] is True
    out = tmp_path / "full"
    # the same cameras as the fixture (the framing scale depends on all of them), uncropped
    job = small_job(FOX, out, uid="fox", crop_border=False)
    proc = run_script("render_asset", job, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["render_settings"]["crop_border"] is False
    for f in range(3):
        name = f"static/v00_f{f:02d}.png"
        np.testing.assert_array_equal(np.array(Image.open(out / name)), np.array(Image.open(out_crop / name)))
