"""The `demo` profile end to end: the commands of the Makefile's `demo` recipe, run in a scratch folder."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pygltflib
import pytest
from PIL import Image

from model.video_input import read_video
from shards.generated_schema import read_generated
from shards.index import index_tar
from shards.latent_schema import decode_latent_sample
from shards.layout import latent_manifest_path, latent_shard_path, render_manifest_path, render_shard_path
from shards.reader import iter_raw_samples, iter_render_samples

ROOT = Path(__file__).resolve().parents[1]


def demo_commands(profile: str = "demo", shard: int = 0) -> list[list[str]]:
    """The `demo:` recipe of the Makefile with its variables expanded (the python is this interpreter)."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "no demo recipe in the Makefile"
    values = {"PY": sys.executable, "PROFILE": profile, "SHARD": str(shard), "SHARD6": f"{shard:06d}"}
    commands = []
    for line in recipe.group(1).splitlines():
        line = line.strip()
        if line.startswith("@"):  # echo
            continue
        line = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], line)
        commands.append(shlex.split(line))
    return commands


@pytest.mark.slow
@pytest.mark.blender
def test_make_demo_runs_every_stage(tmp_path):
    # RAY_ADDRESS=local: a Ray cluster of its own, never one that another job on the machine started
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    env["RAY_ADDRESS"] = "local"
    commands = demo_commands()
    assert [c[2] for c in commands if c[1] == "-m"] == [
        "curation.render",
        "shards.inspect",
        "curation.render",
        "shards.inspect",
        "curation.report",
        "curation.encode_latents",
        "curation.encode_latents",
        "model.train",
        "model.sample",
        "fit4d.run",
        "evaluation.run",
    ]
    for cmd in commands:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{shlex.join(cmd[1:])} failed:\n{proc.stderr[-3000:]}"
    out = tmp_path / "outputs" / "demo"
    for tree in (out, out / "static"):
        renders = list(iter_render_samples(render_shard_path(tree, 0)))
        rows = pq.read_table(render_manifest_path(tree, 0)).to_pylist()
        rendered = sorted(r["uid"] for r in rows if r["status"] == "rendered")
        assert rendered and sorted(s.key for s in renders) == rendered
        latents = [decode_latent_sample(raw) for raw in iter_raw_samples(latent_shard_path(tree, 0))]
        assert [s.key for s in latents] == [s.key for s in renders]  # one latent sample per render sample
        encoded = pq.read_table(latent_manifest_path(tree, 0)).to_pylist()
        assert {r["status"] for r in encoded} == {"encoded"}
        index = index_tar(latent_shard_path(tree, 0))  # complete: end marker and the manifest's count
        assert index.error is None and not index.rejected and len(index.entries) == len(latents)
    assert (out / "report" / "index.html").is_file()
    for stage in ("3d", "4d"):
        (ckpt,) = (out / "checkpoints" / stage).glob("step_*")
        meta = json.loads((ckpt / "meta.json").read_text())
        assert meta["step"] == 4 and meta["bad_steps_total"] == 0 and meta["loss"] == meta["loss"]  # not NaN
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "ema.safetensors").is_file()
    # novel views of the demo render sample from the 4d checkpoint: videos that read back, a valid sample
    (sample_dir,) = [p.parent for p in (out / "samples").glob("*/generated.tar")]
    generated = read_generated(str(sample_dir / "generated.tar"))
    frames, info = read_video(sample_dir / "grid.mp4")
    assert len(frames) == generated.images.shape[1] and info["kind"] == "video"
    assert len(list(sample_dir.glob("view_*.mp4"))) == generated.images.shape[0] - 1  # view 0 is the input
    table = (out / "evaluation" / "table.md").read_text()
    assert "PSNR" in table and "SV4D 2.0" in table
    # both rows are real, not stand-ins: the sampled views and the 4D fit of one object at the ground-truth
    # cameras (the shard's size), every evaluated view held out (both saw only the dynamic orbit), finite PSNR
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    for system, label in (("sample", "sampled views"), ("fit4d", "4D fit")):
        (row,) = [t for t in summary["systems"] if t["predictions"].endswith(f"predictions/{system}")]
        assert row["stand_in"] is False and row["objects"] == 1, row
        assert math.isfinite(row["metrics"]["psnr"]) and row["training_views"] == {}
        (folder,) = (out / "predictions" / system).iterdir()
        gt = next(s for s in iter_render_samples(render_shard_path(out, 0)) if s.key == folder.name)
        pngs = sorted(folder.glob("v*.f*.png"))
        assert len(pngs) == gt.meta["num_views"] * gt.meta["num_frames"]
        assert Image.open(pngs[0]).size == (gt.meta["resolution"],) * 2
        line = next(line for line in table.splitlines() if label in line)
        assert "stand-in" not in line and "not held out" not in line
    info = json.loads((folder.parent.parent / "sample" / folder.name / "prediction.json").read_text())
    assert info["input"]["orbit"] == "dynamic" and info["missing_frames"] == []
    rel = (gt.angles["static"][:, 1] - gt.angles["dynamic"][0, 1]) % 360  # azimuths relative to the input's
    assert [a for _, a in info["cameras"]] == pytest.approx(rel.tolist(), abs=1e-3)
    # the 4D fit of one demo render sample: an animated GLB that an independent reader opens, and its videos
    (fit_dir,) = [p.parent for p in (out / "fit4d").glob("*/done.json")]
    glb = pygltflib.GLTF2().load(str(fit_dir / "asset_morph.glb"))
    assert glb.animations and glb.meshes[0].primitives[0].targets  # morph targets driven by an animation
    frames, _ = read_video(fit_dir / "orbit_rgb.mp4")
    assert len(frames) > 1
