"""End to end through Ray and real Blender: bad assets, resume after a kill, a two-node cluster."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.render import render_shard, shard_paths
from profiles import load_profile
from shards.manifest import read_manifest
from shards.reader import iter_render_samples

pytestmark = [pytest.mark.blender, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "render.resolution=32",
    "render.orbit.num_views=2",
    "render.num_frames=2",
    "render.samples=2",
    "render.threads=1",
    "render.timeout_s=120",
    "assets.source=local",
    "assets.local_license=cc0",
]

_MAKE_BAD = r"""
import sys, bpy
kind, path = sys.argv[1], sys.argv[2]
bpy.ops.wm.read_factory_settings(use_empty=True)
if kind == "nomesh":
    bpy.ops.object.empty_add(location=(0, 0, 0))
    bpy.ops.export_scene.gltf(filepath=path, export_format="GLB")
elif kind == "noanim":
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    bpy.ops.export_scene.gltf(filepath=path, export_format="GLB", export_animations=False)
"""


@pytest.fixture(autouse=True)
def _fresh_ray():
    """Each test starts and ends without a connected Ray driver (render_shard keeps one it started)."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def _bad_asset(kind: str, path: Path) -> Path:
    subprocess.run([sys.executable, "-c", _MAKE_BAD, kind, str(path)], check=True, capture_output=True)
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def good_glb(tmp_path_factory) -> Path:
    """A small procedural animated asset (shape-key morph) made by the generator."""
    out = tmp_path_factory.mktemp("proc")
    subprocess.run(
        [sys.executable, "-m", "blender_scripts.procedural_assets", "--out", str(out), "--only", "morph"],
        check=True,
        capture_output=True,
    )
    index = json.loads((out / "index.json").read_text())
    return out / index[0]["file"]


def _cfg(tmp_path: Path, assets: Path, extra=()):
    cfg = load_profile("demo", [*TINY, f"assets.local_dir={assets}", f"out_dir={tmp_path / 'out'}", *extra])
    return cfg


def test_bad_assets_are_recorded_and_the_rest_renders(tmp_path, good_glb, shared_assets):
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(good_glb, assets / "good.glb")
    fox = (shared_assets / "Fox.glb").read_bytes()
    (assets / "truncated.glb").write_bytes(fox[: len(fox) // 3])
    (assets / "empty.glb").write_bytes(b"")
    _bad_asset("nomesh", assets / "nomesh.glb")
    _bad_asset("noanim", assets / "noanim.glb")
    cfg = _cfg(tmp_path, assets, ["render.retries=0"])
    summary = render_shard(cfg, 0, num_cpus=2)
    rows = {r["uid"]: r for r in read_manifest(Path(summary["manifest"]))}
    assert len(rows) == 5
    good = next(r for uid, r in rows.items() if uid.startswith("good"))
    assert good["status"] == "rendered" and good["num_images"] == 2 * 2 * 2
    reasons = {uid.split("-")[0].split("_")[0]: (r["status"], r["reason"]) for uid, r in rows.items()}
    assert reasons["truncated"][0] == "failed" and reasons["truncated"][1] in ("import_error", "corrupt_file")
    assert reasons["empty"] == ("failed", "empty_file")
    assert reasons["nomesh"] == ("failed", "no_mesh")
    assert reasons["noanim"][1] == "no_animation"
    samples = list(iter_render_samples(summary["tar"]))
    assert [s.key for s in samples] == [good["uid"]]


def test_killed_run_resumes_without_duplicates(tmp_path, good_glb):
    assets = tmp_path / "assets"
    assets.mkdir()
    for i in range(3):
        shutil.copy(good_glb, assets / f"copy{i}.glb")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "curation.render", "--shard", "0", "--num-cpus", "1"]
    for item in [*TINY, f"assets.local_dir={assets}", f"out_dir={out}"]:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    paths = shard_paths(out, 0)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(paths["work"].glob("*/done.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = list(paths["work"].glob("*/done.json"))
    assert first, "no asset finished before the kill"
    assert not paths["tar"].exists() and not paths["manifest"].exists()
    stamp = {p: p.stat().st_mtime_ns for p in first}
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items()), "finished assets were redone"
    keys = [s.key for s in iter_render_samples(paths["tar"])]
    assert len(keys) == 3 == len(set(keys))
    again = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    assert "already complete" in again.stdout


def test_two_node_ray_cluster(tmp_path, good_glb):
    from ray.cluster_utils import Cluster

    assets = tmp_path / "assets"
    assets.mkdir()
    for i in range(4):
        shutil.copy(good_glb, assets / f"copy{i}.glb")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        summary = render_shard(_cfg(tmp_path, assets), 0, address=cluster.address)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    rows = read_manifest(Path(summary["manifest"]))
    assert [r["status"] for r in rows] == ["rendered"] * 4
    assert len({r["node_id"] for r in rows}) == 2, "the shard did not spread over both nodes"
    assert len(list(iter_render_samples(summary["tar"]))) == 4


def test_fox_passes_the_filters_and_renders_through_the_pipeline(tmp_path, shared_assets):
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(shared_assets / "Fox.glb", assets / "Fox.glb")
    (assets / "Fox.glb.license").write_text("CC-BY-4.0\n")
    cfg = _cfg(tmp_path, assets, ["render.resolution=48", "render.orbit.num_views=3", "render.num_frames=3"])
    summary = render_shard(cfg, 0, num_cpus=1)
    (row,) = read_manifest(Path(summary["manifest"]))
    assert row["status"] == "rendered", row
    assert row["num_vertices"] == 1728 and row["license"] == "CC-BY-4.0"
    assert row["motion"] > cfg.curation.filters.min_motion
    assert 1.0 <= row["scale_ratio"] < cfg.curation.filters.max_scale_ratio
    # issue 14: the same path as the procedural assets: framed, checked per image, every action listed
    assert row["border_images"] == 0 and row["transparent_images"] == 0 and row["min_coverage"] > 0.01
    assert json.loads(row["actions"]) == [
        {"name": "Armature|Take 001|BaseLayer", "frame_range": [pytest.approx(0.96), pytest.approx(383.04)]}
    ]
    assert row["orphan_skeleton"] is False
    (sample,) = list(iter_render_samples(summary["tar"]))
    assert sample.meta["normalization"]["rule"] == "framing"
    assert sample.meta["curation"]["image_stats"]["border_images"] == 0
    assert sample.meta["frames"]["action"] and len(sample.meta["frames"]["source_frames"]) == 3
    for orbit in ("static", "dynamic"):
        alpha = sample.images[orbit][..., 3] > 127  # (V, F, H, W)
        coverage = alpha.mean(axis=(2, 3))
        assert (coverage > 0.01).all(), coverage
        assert not alpha[:, :, [0, -1], :].any() and not alpha[:, :, :, [0, -1]].any(), "touches the border"
        # silhouettes change between frames of every view: the animation plays
        assert all((alpha[v, 0] != alpha[v, 1]).any() for v in range(alpha.shape[0]))
