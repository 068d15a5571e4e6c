"""python -m evaluation.run end to end on a small render shard and prediction folders (tiny networks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation import run as runner
from evaluation.inputs import degraded_copy, iter_ground_truth, read_prediction, write_prediction
from profiles.load import load_profile
from shards.render_schema import RenderSample, encode_render_sample
from shards.writer import ShardWriter

V, F, RES = 3, 4, 48


def render_sample(uid: str, seed: int) -> RenderSample:
    """A moving opaque square on transparency, per view a different colour; both orbits."""
    rng = np.random.default_rng(seed)
    images = {}
    for orbit in ("static", "dynamic"):
        stack = np.zeros((V, F, RES, RES, 4), np.uint8)
        for v in range(V):
            colour = rng.integers(0, 256, 3)
            for f in range(F):
                y, x = 8 + 3 * f, 10 + 2 * v
                stack[v, f, y : y + 20, x : x + 20, :3] = colour
                stack[v, f, y : y + 20, x : x + 20, 3] = 255
                stack[v, f, y + 5 : y + 10, x + 5 : x + 10, :3] = rng.integers(0, 256, 3)  # texture
        images[orbit] = stack
    c2w = {o: np.tile(np.eye(4, dtype=np.float32), (V, 1, 1)) for o in images}
    angles = {o: np.zeros((V, 3), np.float32) for o in images}
    meta = {
        "uid": uid,
        "mode": "4d",
        "resolution": RES,
        "num_views": V,
        "num_frames": F,
        "orbits": ["static", "dynamic"],
        "fov_deg": 33.8,
    }
    return RenderSample(uid, images, c2w, angles, np.eye(3, dtype=np.float32), meta)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<out>/renders/shard-000000.tar with objects a and c good and b corrupt, and prediction folders."""
    out = tmp_path_factory.mktemp("eval")
    samples = {uid: render_sample(uid, i) for i, uid in enumerate(["obj-a", "obj-b", "obj-c"])}
    with ShardWriter(out / "renders" / "shard-000000.tar") as writer:
        for uid, sample in samples.items():
            raw = encode_render_sample(sample)
            if uid == "obj-b":
                raw["static.v01.f02.png"] = b"not a png"  # a corrupt ground-truth image
            writer.write(raw)
    views, frames = list(range(V)), list(range(F))
    for uid in ("obj-a", "obj-c"):
        gt = samples[uid].images["static"]
        write_prediction(out / "predictions" / "exact" / uid, gt, views, frames)  # RGBA, identical
        noisy = degraded_copy(gt, 0.1, seed=7)
        write_prediction(out / "predictions" / "noisy" / uid, noisy, views, frames)  # RGB
    # a fitted system's provenance (fit4d writes it): views 0 and 2 were training views, 7 is not evaluated
    info = {"training_views": [2, 0, 7]}
    (out / "predictions" / "noisy" / "obj-a" / "prediction.json").write_text(json.dumps(info))
    write_prediction(
        out / "predictions" / "broken" / "obj-a", samples["obj-a"].images["static"], views, frames
    )
    (out / "predictions" / "broken" / "obj-a" / "v02.f03.png").unlink()  # one image missing
    return out


def config(out: Path, *overrides: str):
    systems = (
        "evaluation.systems=[{name: exact, predictions: predictions/exact}, {name: noisy, predictions: "
        "predictions/noisy}, {name: broken, predictions: predictions/broken}, {name: later, predictions: "
        "predictions/not-yet}]"
    )
    base = [f"out_dir={out}", systems, "evaluation.stand_in=true", "evaluation.lpips_nets=[alex]"]
    base += ["evaluation.table_lpips=alex", "evaluation.device=cpu"]
    return load_profile("demo", [*base, *overrides])


@pytest.mark.slow
def test_run_end_to_end(workspace: Path) -> None:
    summary = runner.run(config(workspace), progress=False)
    totals = {t["system"]: t for t in summary["systems"]}
    exact, noisy, broken, later = (totals[n] for n in ("exact", "noisy", "broken", "later"))
    # the corrupt ground-truth object is a recorded failure of every system, never a crash
    for t in totals.values():
        assert {f["uid"] for f in t["failed"]} >= {"obj-b"}
        assert "static.v01.f02.png" in next(f["reason"] for f in t["failed"] if f["uid"] == "obj-b")
    assert exact["objects"] == noisy["objects"] == later["objects"] == 2
    m = exact["metrics"]
    assert m["psnr"] == m["psnr_fg"] == 100.0 and m["mse"] == 0.0 and m["ssim"] == pytest.approx(1.0)
    assert m["lpips_alex"] == 0.0 and m["clip_s"] == pytest.approx(1.0, abs=1e-5)
    assert all(m[v] == pytest.approx(0.0, abs=1e-9) for v in ("fvd_f", "fvd_v", "fvd_diag", "fv4d"))
    assert all(
        exact["fvd_set"][v] == pytest.approx(0.0, abs=1e-6) for v in ("fvd_f", "fvd_v", "fvd_diag", "fv4d")
    )
    n = noisy["metrics"]
    assert 15 < n["psnr"] < 40 and n["ssim"] < 1 and n["mse"] > 0 and n["lpips_alex"] > 0
    assert all(n[v] > 0 for v in ("fvd_f", "fvd_v", "fvd_diag", "fv4d"))
    # a missing prediction image fails that object only, naming the file
    assert broken["objects"] == 0
    reasons = {f["uid"]: f["reason"] for f in broken["failed"]}
    assert "v02.f03.png" in reasons["obj-a"] and "obj-c" in reasons["obj-c"]
    assert later["stand_in"] and later["metrics"]["psnr"] < 100
    # outputs: per object, per system, the table in the paper's layout
    ev = workspace / "evaluation"
    rec = json.loads((ev / "exact" / "obj-a.json").read_text())
    assert rec["status"] == "ok" and rec["views"] == [0, 1, 2] and rec["frames"] == [0, 1, 2, 3]
    assert len(rec["fvd_per_video"]["fvd_f"]) == V and len(rec["fvd_per_video"]["fvd_v"]) == F
    assert json.loads((ev / "broken" / "obj-a.json").read_text())["status"] == "failed"
    table = (ev / "table.md").read_text()
    lines = table.splitlines()
    assert (
        lines[0]
        == "| Model | LPIPS↓ | CLIP-S↑ | PSNR↑ | SSIM↑ | MSE↓ | FVD-F↓ | FVD-V↓ | FVD-Diag↓ | FV4D↓ |"
    )
    assert lines[2].startswith("| exact | 0.000 | 1.000 | 100.00 | 1.000 | 0.0000 | 0.00 |")
    assert lines[4] == "| broken | - | - | - | - | - | - | - | - | - |"
    assert lines[5].startswith("| later (stand-in: ground truth + noise) |")
    assert "RANDOM" in table and "exact: 2/1" in table
    # training views are recorded per object and in the total, and the row says they were not held out
    assert json.loads((ev / "noisy" / "obj-a.json").read_text())["training_views"] == [0, 2]
    assert "training_views" not in rec and exact["training_views"] == {}
    assert noisy["training_views"] == {"obj-a": [0, 2]}
    assert lines[3].startswith("| noisy (not held out: fitted to the evaluated views 0, 2) |")
    assert json.loads((ev / "summary.json").read_text())["random_weights"] is True

    # resumable: a second run reads every stored result back instead of recomputing it (failures aside)
    def stored() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in ev.glob("*/obj-*.json") if p.parent.name != "broken"}

    before = stored()
    again = runner.run(config(workspace), progress=False)
    assert stored() == before
    assert again["table"] == summary["table"]
    # new prediction files are not served from the stored results either; failures are always retried
    before = {p: p.stat().st_mtime_ns for p in ev.glob("*/obj-*.json")}
    noisy_a = workspace / "predictions" / "noisy" / "obj-a" / "v00.f00.png"
    noisy_a.write_bytes(noisy_a.read_bytes())
    runner.run(config(workspace), progress=False)
    after = {p: p.stat().st_mtime_ns for p in ev.glob("*/obj-*.json")}
    changed = sorted(f"{p.parent.name}/{p.stem}" for p in after if after[p] != before[p])
    assert changed == ["broken/obj-a", "broken/obj-c", "noisy/obj-a"]
    # a table-only setting reuses the stored results, a changed metric setting does not
    foreground = runner.run(config(workspace, "evaluation.region=foreground", "evaluation.fvd_protocol=set"))
    assert stored() == {p: t for p, t in after.items() if p.parent.name != "broken"}
    assert foreground["table"] != summary["table"]
    assert foreground["table"].count("| exact | 0.000 | 1.000 | 100.00 | 1.000 | 0.0000 | 0.00 | 0.00 |") == 1
    runner.run(config(workspace, "evaluation.alpha_threshold=0.25"), progress=False)
    assert {p: p.stat().st_mtime_ns for p in ev.glob("exact/obj-*.json")} != {
        p: t for p, t in after.items() if p.parent.name == "exact"
    }


def test_views_and_frames_select_the_held_out_images(workspace: Path) -> None:
    shard = workspace / "renders" / "shard-000000.tar"
    objs = list(iter_ground_truth([shard], "dynamic", views=[2, 0], frames=[3, 1]))
    good = [o for o in objs if not hasattr(o, "reason")]
    assert [o.uid for o in good] == ["obj-a", "obj-b", "obj-c"]  # obj-b's broken image is not held out here
    full = render_sample("obj-a", 0).images["dynamic"]
    assert np.array_equal(good[0].rgba[0, 1], full[2, 1]) and np.array_equal(good[0].rgba[1, 0], full[0, 3])
    bad = list(iter_ground_truth([shard], "static", views=[5]))
    assert [o.reason for o in bad] == ["ground truth: evaluation.views [5] out of range: the orbit has 3"] * 3
    bad = list(iter_ground_truth([shard], "static", views=[1], frames=[2]))
    assert [o.uid for o in bad if hasattr(o, "reason")] == ["obj-b"] and "static.v01.f02.png" in bad[1].reason


def test_prediction_layout_reader(tmp_path: Path) -> None:
    rgba = render_sample("x", 3).images["static"][:2, :2]
    write_prediction(tmp_path / "x", rgba, [4, 7], [0, 11])
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "v04.f00.png",
        "v04.f11.png",
        "v07.f00.png",
        "v07.f11.png",
    ]
    assert np.array_equal(read_prediction(tmp_path / "x", [4, 7], [0, 11], (RES, RES)), rgba)
    with pytest.raises(ValueError, match="pixels, the ground truth has"):
        read_prediction(tmp_path / "x", [4], [0], (RES + 1, RES))
    (tmp_path / "x" / "v07.f11.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="unreadable prediction .*v07.f11.png"):
        read_prediction(tmp_path / "x", [7], [11], (RES, RES))
    with pytest.raises(ValueError, match="no prediction folder"):
        read_prediction(tmp_path / "y", [0], [0], (RES, RES))


def test_degraded_copy_has_the_requested_noise() -> None:
    rgba = np.full((1, 1, 64, 64, 4), 128, np.uint8)
    rgba[..., 3] = 255
    out = degraded_copy(rgba, 0.05, seed=0).astype(np.float64) / 255.0
    assert out.shape == (1, 1, 64, 64, 3)
    assert np.std(out - 128 / 255) == pytest.approx(0.05, rel=0.05)


def test_cli_help_and_clear_errors(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["--help"])
    assert exc.value.code == 0
    assert "v{VV}.f{FF}.png" in capsys.readouterr().out
    base = [f"--set=out_dir={workspace}", "--set=evaluation.tiny=false", "--set=evaluation.device=cpu"]
    missing = str(workspace / "weights" / "i3d_torchscript.pt")
    rc = runner.main(
        [*base, "--predictions", "exact=predictions/exact", f"--set=evaluation.i3d_path={missing}"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and missing in err and "evaluation.i3d_path" in err and err.count("\n") == 1
    assert runner.main([*base, "--set=evaluation.systems=[]"]) == 2
    assert "--predictions NAME=DIR" in capsys.readouterr().err
    assert runner.main([*base, "--predictions", "x=predictions/none"]) == 2  # demo has stand_in: true
    assert "evaluation.stand_in" in capsys.readouterr().err
    assert runner.main([*base, "--set=evaluation.stand_in=false"]) == 2  # the demo's folders do not exist
    assert "predictions/sample" in capsys.readouterr().err
    assert runner.main([*base, "--predictions", "no-equals-sign"]) == 2
    assert runner.main([*base, "--set=evaluation.bogus=1"]) == 2
    assert "evaluation.bogus" in capsys.readouterr().err


def test_weight_free_metrics_always_run(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = runner.main(
        [
            f"--set=out_dir={workspace}",
            "--set=evaluation.tiny=false",
            "--set=evaluation.out_subdir=eval-noweights",
            "--set=evaluation.device=cpu",
            "--predictions",
            "exact=predictions/exact",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "| exact | - | - | 100.00 | 1.000 | 0.0000 | - | - | - | - |" in out
    assert "Not computed" in out and "evaluation.i3d_path is empty" in out


@pytest.mark.slow
def test_a_prediction_missing_frames_is_evaluated_on_the_frames_it_has(tmp_path: Path) -> None:
    # a sampler given fewer frames than evaluated (model/eval_predictions.py) writes the frames it produced
    # and lists the rest as missing_frames: the object is evaluated on those frames, and says which it lacks
    sample = render_sample("obj-a", 0)
    with ShardWriter(tmp_path / "renders" / "shard-000000.tar") as writer:
        writer.write(encode_render_sample(sample))
    gt = sample.images["static"]
    for name, frames, missing in (("short", [0, 2], [1, 3]), ("none", [], [0, 1, 2, 3])):
        folder = tmp_path / "predictions" / name / "obj-a"
        write_prediction(folder, gt[:, frames], list(range(V)), frames)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prediction.json").write_text(json.dumps({"frames": frames, "missing_frames": missing}))
    systems = (
        "evaluation.systems=[{name: short, predictions: predictions/short}, "
        "{name: none, predictions: predictions/none}]"
    )
    cfg = load_profile(
        "demo",
        [f"out_dir={tmp_path}", systems, "evaluation.lpips_nets=[alex]", "evaluation.table_lpips=alex"],
    )
    totals = {t["system"]: t for t in runner.run(cfg, progress=False)["systems"]}
    rec = json.loads((tmp_path / "evaluation" / "short" / "obj-a.json").read_text())
    assert rec["status"] == "ok" and rec["frames"] == [0, 2] and rec["missing_frames"] == [1, 3]
    assert totals["short"]["metrics"]["psnr"] == 100.0 and len(rec["fvd_per_video"]["fvd_v"]) == 2
    assert (
        totals["none"]["objects"] == 0
        and "none of the evaluated frames" in totals["none"]["failed"][0]["reason"]
    )
