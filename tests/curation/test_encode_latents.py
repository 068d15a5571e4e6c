import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.encode_latents import (
    decode_pngs,
    encode_latents,
    image_rows,
    index_render_shard,
    main,
    pending_shards,
)
from model.encoders import Encoders, EncoderSpec
from profiles import load_profile
from shards.latent_schema import decode_latent_sample
from shards.layout import latent_manifest_path as manifest_path
from shards.layout import latent_shard_path, render_shard_path
from shards.reader import iter_raw_samples
from shards.render_schema import encode_render_sample
from shards.writer import ShardWriter
from tests.synthetic import make_render_sample

RES, VIEWS, FRAMES = 32, 2, 2


def _truncate_png(raw, name="dynamic.v01.f00.png"):
    raw[name] = raw[name][: len(raw[name]) // 2]


def _bad_camera(raw):
    raw["static.c2w.npy"] = raw["static.c2w.npy"][:-8]


def write_render_shard(out, n, keys, damage=None):
    """Render shard n with synthetic samples; damage: {key: function(raw)} to corrupt one."""
    samples = {}
    with ShardWriter(render_shard_path(out, n)) as writer:
        for i, key in enumerate(keys):
            sample = make_render_sample(key, views=VIEWS, frames=FRAMES, res=RES, seed=100 * n + i)
            raw = encode_render_sample(sample)
            if damage and key in damage:
                damage[key](raw)
            writer.write(raw)
            samples[key] = sample
    return samples


def test_index_skips_a_sample_with_broken_cameras_and_lists_image_ranges(tmp_path):
    write_render_shard(tmp_path, 0, ["a", "b"], damage={"a": _bad_camera})
    index = index_render_shard(render_shard_path(tmp_path, 0))
    assert [s.key for s in index.samples] == ["b"]
    assert [f["uid"] for f in index.failures] == ["a"]
    assert "static.c2w.npy" in index.failures[0]["detail"]
    rows = list(image_rows({"path": str(render_shard_path(tmp_path, 0))}))
    assert len(rows) == 2 * VIEWS * FRAMES  # two orbits
    assert {(r["orbit"], r["view"], r["frame"]) for r in rows} == {
        (o, v, f) for o in ("static", "dynamic") for v in range(VIEWS) for f in range(FRAMES)
    }


def test_decode_pngs_reads_byte_ranges_and_reports_a_truncated_png(tmp_path):
    samples = write_render_shard(tmp_path, 0, ["a", "b"], damage={"b": _truncate_png})
    rows = list(image_rows({"path": str(render_shard_path(tmp_path, 0))}))
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = decode_pngs(batch)
    for i, r in enumerate(rows):
        name = f"{r['orbit']}.v{r['view']:02d}.f{r['frame']:02d}.png"
        if r["key"] == "b" and name == "dynamic.v01.f00.png":
            assert name in out["error"][i] and out["rgba"][i] == b""
        else:
            assert out["error"][i] == ""
            img = np.frombuffer(out["rgba"][i], np.uint8).reshape(RES, RES, 4)
            np.testing.assert_array_equal(img, samples[r["key"]].images[r["orbit"]][r["view"], r["frame"]])


def test_pending_skips_complete_shards_only(tmp_path):
    write_render_shard(tmp_path, 0, ["a"])
    write_render_shard(tmp_path, 1, ["b"])
    latent_shard_path(tmp_path, 0).parent.mkdir(parents=True)
    latent_shard_path(tmp_path, 0).write_bytes(b"")
    # a killed run leaves only a .partial file: not complete
    latent_shard_path(tmp_path, 1).with_name("shard-000001.tar.partial").write_bytes(b"x")
    todo, done = pending_shards(tmp_path)
    assert [p.name for p in todo] == ["shard-000001.tar"] and [p.name for p in done] == ["shard-000000.tar"]
    with pytest.raises(ValueError, match=r"no render shard\(s\) \[7\]"):
        pending_shards(tmp_path, [7])


@pytest.fixture
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_stage_encodes_skips_corrupt_samples_and_resumes(tmp_path, ray_local):
    out = tmp_path / "out"
    renders = {}
    renders.update(write_render_shard(out, 0, ["a0", "a1"]))
    renders.update(write_render_shard(out, 1, ["b0", "b1", "b2"], damage={"b1": _truncate_png}))
    cfg = load_profile("demo", [f"out_dir={out}", "encode.tiny=true", "encode.batch_size=3"])

    summaries = encode_latents(cfg, progress=False)
    assert [(s["shard"], s["encoded"], s["failed"]) for s in summaries] == [(0, 2, 0), (1, 2, 1)]

    manifest = pq.read_table(manifest_path(out, 1)).to_pylist()
    assert [(r["uid"], r["status"], r["reason"]) for r in manifest] == [
        ("b0", "encoded", ""),
        ("b1", "failed", "bad_image"),
        ("b2", "encoded", ""),
    ]
    assert "dynamic.v01.f00.png" in manifest[1]["detail"]

    encoders = Encoders(EncoderSpec(**_tiny_paths(out), tiny=True))
    for n, keys in ((0, ["a0", "a1"]), (1, ["b0", "b2"])):
        got = [decode_latent_sample(raw) for raw in iter_raw_samples(latent_shard_path(out, n))]
        assert [g.key for g in got] == keys
        for g in got:
            r = renders[g.key]
            assert g.meta["encoder"]["clip_dim"] == 32 and g.meta["uid"] == g.key
            assert g.meta["num_frames"] == FRAMES and g.meta["resolution"] == RES
            np.testing.assert_array_equal(g.intrinsics, r.intrinsics)
            for orbit in ("static", "dynamic"):
                np.testing.assert_array_equal(g.c2w[orbit], r.c2w[orbit])
                np.testing.assert_array_equal(g.angles[orbit], r.angles[orbit])
                assert g.mean[orbit].shape == (VIEWS, FRAMES, 4, RES // 8, RES // 8)
                direct = encoders.encode(r.images[orbit].reshape(-1, RES, RES, 4))
                want = direct.mean.reshape(g.mean[orbit].shape).astype(np.float16)
                np.testing.assert_allclose(g.mean[orbit], want, rtol=2e-3, atol=1e-4)
                want = direct.std.reshape(g.std[orbit].shape).astype(np.float16)
                np.testing.assert_allclose(g.std[orbit], want, rtol=2e-3, atol=1e-4)
                want = direct.clip.reshape(VIEWS, FRAMES, -1).astype(np.float16)
                np.testing.assert_allclose(g.clip[orbit], want, rtol=2e-3, atol=1e-4)

    # resume: finished shards are skipped untouched; a removed one is redone identically
    stamp = os.stat(latent_shard_path(out, 0)).st_mtime_ns
    first = latent_shard_path(out, 1).read_bytes()
    latent_shard_path(out, 1).unlink()
    summaries = encode_latents(cfg, progress=False)
    assert [s["shard"] for s in summaries] == [1]
    assert os.stat(latent_shard_path(out, 0)).st_mtime_ns == stamp
    assert latent_shard_path(out, 1).read_bytes() == first  # deterministic
    assert encode_latents(cfg, progress=False) == []


def _tiny_paths(out):
    base = out / "encoders" / "tiny"
    return {
        "vae_path": str(base),
        "vae_subfolder": "vae",
        "clip_model": "sv4d2-tiny-clip",
        "clip_pretrained": str(base / "clip" / "open_clip_pytorch_model.bin"),
        "clip_model_config": str(base / "clip" / "sv4d2-tiny-clip.json"),
    }


def test_cli_help_explains_itself(capsys):
    from curation.encode_latents import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--shard" in text and "latent shards" in text and "encode.tiny" in text


def _shard_with_raws(out, n, raws):
    with tarfile.open(render_shard_path(out, n), "w") as tar:  # not ShardWriter: it refuses duplicates
        for raw in raws:
            for name in sorted(k for k in raw if not k.startswith("__")):
                info = tarfile.TarInfo(f"{raw['__key__']}.{name}")
                info.size = len(raw[name])
                tar.addfile(info, io.BytesIO(raw[name]))


def _raw(key, seed=0):
    return encode_render_sample(make_render_sample(key, views=VIEWS, frames=FRAMES, res=RES, seed=seed))


def test_index_keeps_the_good_sample_before_a_duplicated_key(tmp_path):
    # item 5: b is good, then a copy of b comes; b stays planned, c after it too, the copy is a failure row
    render_shard_path(tmp_path, 0).parent.mkdir(parents=True)
    _shard_with_raws(tmp_path, 0, [_raw("a"), _raw("b", 1), _raw("b", 2), _raw("c", 3)])
    index = index_render_shard(render_shard_path(tmp_path, 0))
    assert [s.key for s in index.samples] == ["a", "b", "c"]
    assert [(f["uid"], f["reason"]) for f in index.failures] == [("b", "schema")]
    assert "duplicate sample key" in index.failures[0]["detail"]


def test_index_fails_a_malformed_meta_alone(tmp_path):
    # item 6: a JSON list, a non-numeric count and a huge size fail their sample only
    bad = {
        "b": b"[1, 2, 3]",
        "c": json.dumps(dict(make_render_sample("c").meta, num_views="abc")).encode(),
        "d": json.dumps(dict(make_render_sample("d").meta, num_views=100000, num_frames=100000)).encode(),
    }
    write_render_shard(
        tmp_path,
        0,
        ["a", "b", "c", "d", "e"],
        damage={k: lambda raw, v=v: raw.update({"meta.json": v}) for k, v in bad.items()},
    )
    index = index_render_shard(render_shard_path(tmp_path, 0))
    assert [s.key for s in index.samples] == ["a", "e"]
    assert [(f["uid"], f["reason"]) for f in index.failures] == [
        ("b", "schema"),
        ("c", "schema"),
        ("d", "schema"),
    ]
    assert "expected a JSON object" in index.failures[0]["detail"]


def test_index_reports_a_render_shard_cut_at_a_sample_boundary(tmp_path):
    # item 4: the cut shard's samples are encoded, and the manifest gets an unreadable_tar row naming it
    write_render_shard(tmp_path, 0, ["a", "b", "c"])
    path = render_shard_path(tmp_path, 0)
    with tarfile.open(path) as tar:
        cut = next(m.offset for m in tar if m.name.startswith("c."))
    path.write_bytes(path.read_bytes()[:cut])
    index = index_render_shard(path)
    assert [s.key for s in index.samples] == ["a", "b"]
    assert [(f["uid"], f["reason"]) for f in index.failures] == [("", "unreadable_tar")]
    assert index.failures[0]["detail"].startswith("shard-000000.tar: incomplete tar")


def test_cli_errors_are_one_line(tmp_path, capsys):
    # item 9: out_dir a file, out_dir misspelt, a bad setting: exit 2 with one line, nothing encoded
    (tmp_path / "file").write_text("x")
    cases = [
        (["--set", f"out_dir={tmp_path / 'file'}"], "is not a folder"),
        (["--set", f"out_dir={tmp_path / 'typo'}"], "is not a folder"),
        (["--set", f"out_dir={tmp_path}"], "no render shards under"),
        (["--set", "encode.batch_sise=3"], "batch_sise"),
    ]
    for argv, match in cases:
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("encode_latents: error:") and match in err[0], err


def test_ray_usage_stats_are_off_unless_asked(monkeypatch):
    # item 12 for the latent stage's own ray.init (the render stage's is i14's)
    import ray

    from curation import encode_latents as stage

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(os.environ.get("RAY_USAGE_STATS_ENABLED")))
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    stage._init_ray()
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    stage._init_ray()
    assert seen == ["0", "1"]
