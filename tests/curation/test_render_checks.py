"""Issue 14 without Blender: framing math, alpha checks, clip windows, licences, orphan skins, timeouts,
fingerprints, --retry-failed, the cluster-size check and --out."""

import json
import math

import numpy as np
import pytest

from blender_scripts.cameras import c2w_opencv, dynamic_orbit, intrinsics, project, static_orbit
from blender_scripts.gltf_checks import orphan_skins
from blender_scripts.normalize import framing_half_side, framing_scale
from curation.clip_choice import window_motion
from curation.filters import decide_images
from curation.image_checks import alpha_coverage, touches_border
from curation.sources import normalize_license, spdx_license
from profiles import load_profile
from profiles.schema import FilterConfig


def test_framing_scale_worked_example():
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    s = framing_scale(np.array([[0.0, 0.5, 0.0]]), c2w_opencv(0, 0, 2)[None], K, 40.0)
    assert s == pytest.approx(1.6)
    assert project(np.array([0.0, 0.5 * s, 0.0]), c2w_opencv(0, 0, 2), K)[0] == pytest.approx(32 + 40)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_framing_scale_is_tight_over_both_orbits(seed):
    # the worst case of the old rule: box corners and a point cloud off-centre, seen from both orbits
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.5, 0.5, (500, 3)) * rng.uniform(0.2, 1.5, 3)
    cams = np.concatenate([static_orbit(8, 10.0, 2.0).c2w, dynamic_orbit(8, seed).c2w])
    res = 96
    K = intrinsics(33.8, res)
    half = framing_half_side(res, 0.9, 2.0)
    s = framing_scale(pts, cams, K, half)
    offsets = np.concatenate([np.abs(project(s * pts, c, K) - res / 2).max(0) for c in cams])
    assert offsets.max() == pytest.approx(half, rel=1e-9)  # some point reaches the frame exactly...
    assert (np.abs(project(1.0001 * s * pts, cams[np.argmax(offsets) // 2], K) - res / 2).max()) > half


def test_unit_extent_rule_cuts_a_unit_cube_and_framing_does_not():
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    cams = np.concatenate([static_orbit(6, 10.0, 2.0).c2w, dynamic_orbit(6, 0).c2w])
    K = intrinsics(33.8, 96)
    old = max(np.abs(project(corners, c, K) - 48).max() for c in cams) / 48
    assert old > 1.3  # the 1.46x: corners outside the image
    s = framing_scale(corners, cams, K, framing_half_side(96, 0.9, 2.0))
    new = max(np.abs(project(s * corners, c, K) - 48).max() for c in cams) / 48
    assert new == pytest.approx(0.9, rel=1e-9) and s < 1


def test_framing_half_side_keeps_a_pixel_margin_on_small_images():
    assert framing_half_side(576, 0.9, 2.0) == pytest.approx(259.2)
    assert framing_half_side(16, 0.9, 2.0) == pytest.approx(6.0)  # 0.9 * 8 = 7.2 would leave 0.8 px


def test_framing_scale_rejects_cameras_not_looking_at_the_origin():
    cam = c2w_opencv(0, 0, 2)
    cam[:3, 3] += [0, 0.3, 0]
    with pytest.raises(ValueError, match="look at the origin"):
        framing_scale(np.ones((2, 3)), cam[None], intrinsics(33.8, 64), 20.0)


def test_alpha_checks_known_answers():
    a = np.zeros((8, 8), np.uint8)
    a[2:6, 2:6] = 255
    assert alpha_coverage(a) == pytest.approx(16 / 64) and not touches_border(a)
    a[7, 3] = 1  # one faint pixel on the last row is a touch
    assert touches_border(a)
    assert alpha_coverage(np.zeros((4, 4), np.uint8)) == 0.0


def test_image_filters():
    cfg = FilterConfig(max_border_images=0, min_alpha_coverage=0.01, max_transparent_images=0)
    ok = {"coverage": {"static": [[0.2, 0.3]]}, "border_images": 0, "images": 2}
    assert decide_images(ok, cfg) is None
    reason, detail = decide_images({**ok, "border_images": 1}, cfg)
    assert reason == "border_touch" and "1 of 2" in detail
    reason, _ = decide_images({**ok, "coverage": {"static": [[0.2, 0.0]]}}, cfg)
    assert reason == "transparent_image"


def test_window_motion_finds_the_moving_half():
    # still for 2 s, then moving: the nearly still start (the old choice) must lose
    times = np.linspace(0, 4, 41)
    base = np.random.default_rng(0).normal(size=(50, 3))
    amp = np.clip(times - 2.0, 0, None)
    pos = np.stack([base * (1 + 0.0 * a) + [0, 0, 0] for a in amp])
    pos[:, :25, 0] += amp[:, None] * np.sin(3 * times)[:, None]  # half the points wave, more and more

    def motion(p):
        return float(np.linalg.norm(p - p.mean(0), axis=-1).mean())

    k, score = window_motion(pos, times, 1.0, 6, motion)
    assert times[k] >= 2.0 and score > 0
    k0, _ = window_motion(pos, times, 0.0, 6, motion)  # duration 0: the whole take
    assert k0 == 0


@pytest.mark.parametrize(
    "text,code,spdx",
    [
        ("Creative Commons Attribution 4.0 International", "by", "CC-BY-4.0"),
        ("https://creativecommons.org/licenses/by-sa/4.0/", "by-sa", "CC-BY-SA-4.0"),
        ("http://creativecommons.org/publicdomain/zero/1.0/", "cc0", "CC0-1.0"),
        ("Public domain (CC0)", "cc0", "CC0-1.0"),
        ("Creative Commons Attribution-NonCommercial-ShareAlike 3.0 Unported", "by-nc-sa", "CC-BY-NC-SA-3.0"),
        ("CC-BY-4.0", "by", "CC-BY-4.0"),
        ("by-nc", "by-nc", "CC-BY-NC-4.0"),
        ("MIT License", "mit", "MIT"),
        ("Standard", "standard", "unknown"),
    ],
)
def test_licence_spellings(text, code, spdx):
    assert normalize_license(text) == code and spdx_license(text) == spdx


def test_orphan_skin_detection():
    gltf = {
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "skin": 0}, {"children": [2]}, {}],
        "skins": [{"joints": [1, 2]}],
    }
    assert orphan_skins(gltf) == [0]  # node 1, the skeleton root, is in no scene
    gltf["scenes"][0]["nodes"].append(1)
    assert orphan_skins(gltf) == []


def test_timeout_is_not_repeated_at_the_same_budget(tmp_path):
    from curation.blender_job import run_blender_script

    def run(sub, growth):
        d = tmp_path / sub
        d.mkdir()
        return run_blender_script(
            "tests.curation.fake_job",
            {"out_dir": str(d), "behaviour": ["hang", "ok"]},
            d,
            "result.json",
            timeout_s=1.0,
            retries=2,
            expected_files=lambda res: [d / "image.png"],
            timeout_growth=growth,
        )

    same = run("same", 1.0)
    assert not same.ok and same.reason == "timeout" and same.attempts == 1 and same.timeout_s == 1.0
    grown = run("grown", 3.0)
    assert grown.ok and grown.attempts == 2 and grown.timeout_s == 3.0


def test_timeout_budget_scales_with_images_and_rerun_policy(tmp_path):
    from curation.asset_task import job_timeout, read_done_rows

    cfg = load_profile("demo", ["render.timeout_s=60", "render.timeout_per_image_s=2"])
    assert job_timeout(cfg.render, 72) == 60 + 144
    d = tmp_path / "a"
    d.mkdir()
    row = {"uid": "a", "source": "local", "status": "failed", "reason": "timeout", "num_images": 72}
    (d / "done.json").write_text(json.dumps({**row, "timeout_s": 204.0}))
    assert read_done_rows(d, None, cfg)[0]["reason"] == "timeout"  # same budget: a decision, not retried
    bigger = load_profile("demo", ["render.timeout_s=60", "render.timeout_per_image_s=5"])
    assert read_done_rows(d, None, bigger) is None  # a larger budget: worth another attempt


def test_fingerprint_changes_with_images_not_with_limits(tmp_path):
    from curation.asset_task import prepare_asset_dir, settings_fingerprint

    cfg = load_profile("demo")
    fp = settings_fingerprint(cfg)["fingerprint"]
    assert (
        settings_fingerprint(load_profile("demo", ["render.timeout_s=5", "render.retries=3"]))["fingerprint"]
        == fp
    )
    other = settings_fingerprint(load_profile("demo", ["render.resolution=64"]))
    assert other["fingerprint"] != fp
    d = tmp_path / "asset"
    assert not prepare_asset_dir(d, settings_fingerprint(cfg))
    (d / "static").mkdir()
    (d / "static" / "v00_f00.png").write_bytes(b"old")
    (d / "done.json").write_text("{}")
    assert not prepare_asset_dir(d, settings_fingerprint(cfg))  # same settings: kept
    assert (d / "done.json").exists()
    assert prepare_asset_dir(d, other)  # new resolution: emptied, nothing old to repack
    assert sorted(p.name for p in d.iterdir()) == ["settings.json"]


def _shard_setup(tmp_path, monkeypatch, statuses):
    from curation import hdri, render, sources
    from curation.asset_task import prepare_asset_dir, settings_fingerprint
    from shards.manifest import write_manifest

    cfg = load_profile("demo", [f"out_dir={tmp_path}"])
    records = [
        sources.AssetRecord(uid=u, source="local", path=str(tmp_path / f"{u}.glb"), license="cc0")
        for u in statuses
    ]
    monkeypatch.setattr(sources, "list_assets", lambda _cfg: records)
    monkeypatch.setattr(hdri, "prepare_library", lambda *a, **k: [])
    monkeypatch.setattr(render, "_init_ray", lambda *a: None)
    paths = render.shard_paths(tmp_path, 0)
    rows = []
    for uid, (status, reason) in statuses.items():
        prepare_asset_dir(paths["work"] / uid, settings_fingerprint(render.absolute_paths(cfg)))
        row = {"uid": uid, "source": "local", "status": status, "reason": reason}
        (paths["work"] / uid / "done.json").write_text(json.dumps(row))
        rows.append(row)
    paths["tar"].parent.mkdir(parents=True)
    paths["tar"].write_bytes(b"")
    write_manifest(paths["manifest"], rows)
    seen = []

    def fake_run_tasks(records, cfg, work):
        from curation.asset_task import read_done_rows

        todo = [r.uid for r in records if read_done_rows(work / r.uid, None, cfg) is None]
        seen.append(todo)
        return [[{"uid": r.uid, "source": "local", "status": "filtered", "reason": "x"}] for r in records]

    monkeypatch.setattr(render, "run_tasks", fake_run_tasks)
    return cfg, seen


def test_retry_failed_redoes_only_the_failed_asset(tmp_path, monkeypatch):
    from curation import render

    cfg, seen = _shard_setup(
        tmp_path, monkeypatch, {"good": ("rendered", None), "bad": ("failed", "import_error")}
    )
    assert render.render_shard(cfg, 0)["skipped"] and not seen  # complete: a failed decision stands
    render.render_shard(cfg, 0, retry_failed=True)
    assert seen == [["bad"]]


def test_a_transient_failure_keeps_the_shard_incomplete(tmp_path, monkeypatch):
    from curation import render

    cfg, seen = _shard_setup(tmp_path, monkeypatch, {"good": ("rendered", None), "c": ("failed", "crash")})
    assert not render.render_shard(cfg, 0)["skipped"]
    assert seen == [["c"]]


def shard_args(out, *sets: str) -> list[str]:
    """`python -m curation.render` arguments for shard 0 into `out` with `--set` overrides."""
    return ["--shard", "0", "--out", str(out), *[arg for s in sets for arg in ("--set", s)]]


def test_a_task_larger_than_the_cluster_stops_at_once(tmp_path, monkeypatch, capsys):
    from curation import render

    cfg, seen = _shard_setup(tmp_path, monkeypatch, {"c": ("failed", "crash")})
    monkeypatch.setattr(render, "_cluster_resources", lambda: {"CPU": 2.0})
    code = render.main(shard_args(tmp_path, "render.cpus_per_task=4", "render.gpus_per_task=0"))
    err = capsys.readouterr().err
    assert code == 2 and "render.cpus_per_task=4" in err and "2 CPUs" in err and not seen
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="render.gpus_per_task"):
        render.check_resources(load_profile("demo", ["render.gpus_per_task=1"]), {"CPU": 8.0})


def test_missing_local_dir_is_one_line(tmp_path, capsys):
    from curation import render

    code = render.main(shard_args(tmp_path, "assets.source=local", f"assets.local_dir={tmp_path}/nope"))
    err = capsys.readouterr().err
    assert code == 2 and "local_dir" in err and len(err.strip().splitlines()) == 1


def test_out_moves_the_demo_hdri_library(tmp_path):
    from curation.render import move_out_dir

    cfg = load_profile("demo")
    moved = move_out_dir(cfg, str(tmp_path / "elsewhere"))
    assert moved.curation.hdri.library_dir == str(tmp_path / "elsewhere" / "hdri")
    assert moved.assets.cache_dir == str(tmp_path / "elsewhere" / "assets")
    far = move_out_dir(load_profile("demo", ["curation.hdri.library_dir=/srv/hdri"]), str(tmp_path))
    assert far.curation.hdri.library_dir == "/srv/hdri"  # a library outside out_dir stays put


def test_clip_slugs_are_keys_and_unique():
    from curation.asset_task import clip_slug
    from shards.render_schema import KEY_RE

    taken: set[str] = set()
    slugs = [clip_slug(n, taken) for n in ("Armature|Run", "Armature|Run", "idle.001", "???")]
    assert slugs == ["Armature_Run", "Armature_Run_2", "idle_001", "action"]
    assert all(KEY_RE.match(f"fox-{s}") for s in slugs)
    assert math.isfinite(len(taken))


def test_orphan_skin_rotation_is_the_viewer_blender_disagreement():
    from blender_scripts.gltf_checks import orphan_skin_rotation_deg

    half = math.sqrt(0.5)
    gltf = {
        "scenes": [{"nodes": [0]}],
        "nodes": [{"rotation": [-half, 0, 0, half], "children": [1]}, {"mesh": 0, "skin": 0}, {}],
        "skins": [{"joints": [2]}],
    }
    assert orphan_skin_rotation_deg(gltf) == pytest.approx(90.0)
    gltf["nodes"][0].pop("rotation")
    assert orphan_skin_rotation_deg(gltf) == pytest.approx(0.0)  # nothing to disagree about


def test_objaverse_xl_paths_stay_in_the_cache(tmp_path):
    from curation.sources import AssetFetchError, AssetRecord, _fetch_objaverse_xl

    secret = tmp_path / "secret.glb"
    secret.write_bytes(b"glTF")
    cfg = load_profile("demo", [f"assets.cache_dir={tmp_path / 'cache'}"]).assets
    (tmp_path / "cache" / "github" / "repos" / "org" / "repo").mkdir(parents=True)
    url = "https://github.com/org/repo/blob/abc/../../../../../secret.glb"  # = tmp_path/secret.glb
    rec = AssetRecord(uid="x", source="objaverse_xl", url=url, license="cc0")
    with pytest.raises(AssetFetchError, match="leaves the cache folder"):
        _fetch_objaverse_xl(rec, cfg)


def test_outputs_are_checked_by_decoding(tmp_path):
    from PIL import Image

    from curation.blender_job import output_ok

    good = tmp_path / "good.png"
    Image.new("RGBA", (8, 8)).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")  # what Blender wrote on a full disk
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:40])
    assert output_ok(good) and not output_ok(empty) and not output_ok(cut)
    assert not output_ok(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "setting", ["render.timeout_s=0", "render.retries=-1", "render.cpus_per_task=0", "render.fill=1.5"]
)
def test_damaging_settings_are_refused_at_load(setting):
    from profiles import ConfigError

    with pytest.raises(ConfigError, match=setting.split("=")[0].split(".")[1]):
        load_profile("demo", [setting])


def test_blender_processes_leave_no_temp_folders(tmp_path):
    from curation.blender_job import run_blender_script

    out = run_blender_script(
        "tests.curation.fake_job",
        {"out_dir": str(tmp_path), "behaviour": ["ok"]},
        tmp_path,
        "result.json",
        timeout_s=20.0,
        expected_files=lambda res: [],
    )
    assert out.ok and not (tmp_path / "tmp").exists()


def test_work_images_can_go_once_the_shard_holds_them(tmp_path):
    from PIL import Image

    from blender_scripts.cameras import static_orbit
    from curation.render import build_shard, shard_paths
    from curation.sources import AssetRecord
    from shards.reader import iter_render_samples

    paths = shard_paths(tmp_path, 0)
    sample_dir = paths["work"] / "a"
    (sample_dir / "static").mkdir(parents=True)
    result = {
        "uid": "a",
        "mode": "static",
        "resolution": 8,
        "fov_deg": 33.8,
        "K": intrinsics(33.8, 8).tolist(),
        "cameras": {"static": static_orbit(2, 10.0, 2.0).to_json()},
        "frames": {"source_frames": [1.0]},
        "normalization": {"scale": 1.0, "offset": [0, 0, 0]},
    }
    (sample_dir / "result.json").write_text(json.dumps(result))
    for v in range(2):
        Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(sample_dir / "static" / f"v{v:02d}_f00.png")
    record = AssetRecord(uid="a", source="local", path="a.glb", license="cc0")
    rows = [[{"uid": "a", "source": "local", "status": "rendered"}]]
    assert build_shard([record], rows, paths, keep_images=False) == 1
    (sample,) = list(iter_render_samples(paths["tar"]))
    assert sample.images["static"].shape == (2, 1, 8, 8, 4) and sample.images["static"][..., 0].min() == 255
    assert not list(sample_dir.glob("*/*.png")) and (sample_dir / "result.json").is_file()


def test_render_jobs_are_cfg_render_plus_the_per_asset_fields(tmp_path):
    from blender_scripts.job import RenderJob
    from curation.asset_task import base_job

    cfg = load_profile("sv4d2")
    job = base_job(cfg, "a", tmp_path / "a.glb", tmp_path / "out")
    back = RenderJob.from_dict(json.loads(json.dumps(job)))  # through the JSON file, as the scripts read it
    assert back.render == cfg.render  # no second copy of the settings with other defaults
    assert back.num_images == 24 * 2 * 24
    with pytest.raises(ValueError, match="job.render.samples"):
        RenderJob.from_dict({**job, "render": {**job["render"], "samples": "many"}})
    with pytest.raises(ValueError, match="unknown key job.resolution"):
        RenderJob.from_dict({**job, "resolution": 64})  # the old flat layout is refused, not ignored
