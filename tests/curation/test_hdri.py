"""Near-ambient HDRI: the RGBE codec, the ambient score on generated maps, the library, cache and choice."""

import json
import os

import numpy as np
import pytest

from curation import hdri
from curation.hdri import (
    CACHE_FILE,
    ambient_score,
    choose_environment,
    generate_demo_maps,
    prepare_library,
    read_hdr,
    scan_library,
    write_hdr,
)
from profiles.schema import HdriConfig


@pytest.mark.parametrize("rle", [True, False])
def test_hdr_round_trip(tmp_path, rle):
    rng = np.random.default_rng(0)
    img = (rng.random((20, 37, 3)) ** 3 * 1000).astype(np.float32)
    img[3, :] = 0.5  # long equal runs exercise the run packets
    img[5, 4] = 0.0
    path = write_hdr(tmp_path / "m.hdr", img, rle=rle)
    back = read_hdr(path)
    assert back.shape == img.shape and back.dtype == np.float32
    # RGBE keeps 8 mantissa bits relative to the brightest channel of each pixel
    rel = np.abs(back - img) / img.max(axis=-1, keepdims=True).clip(1e-30)
    assert rel[img.max(-1) > 0].max() <= 1.0 / 256 + 1e-7
    assert back[5, 4].max() == 0.0


def test_hdr_reader_rejects_garbage(tmp_path):
    (tmp_path / "bad.hdr").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    with pytest.raises(ValueError, match="Radiance"):
        read_hdr(tmp_path / "bad.hdr")
    good = write_hdr(tmp_path / "t.hdr", np.ones((4, 16, 3)))
    (tmp_path / "trunc.hdr").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_hdr(tmp_path / "trunc.hdr")


def _sun_map(h=128, w=256, el_deg=40.0, az_deg=70.0, sun=5000.0):
    dirs, _ = hdri.equirect_directions(h, w)
    el, az = np.deg2rad(el_deg), np.deg2rad(az_deg)
    s = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    img = np.full((h * w, 3), 0.3)
    img[dirs @ s > np.cos(np.deg2rad(2.0))] = sun
    return img.reshape(h, w, 3)


def test_uniform_sky_scores_about_zero():
    assert ambient_score(np.ones((64, 128, 3)))["score"] < 1e-3


def test_small_bright_sun_scores_high():
    score = ambient_score(_sun_map())["score"]
    assert score > 2.0
    # a lone point light is the order-2 limit: (max - min) / mean = 4.4
    point = np.full((256, 512, 3), 1e-9)
    point[60, 130] = 1e6
    assert ambient_score(point)["score"] == pytest.approx(4.41, abs=0.05)


def test_score_invariant_to_rotation_about_vertical():
    img = _sun_map()
    base = ambient_score(img)["score"]
    for shift in (1, 37, 101, 200):
        assert ambient_score(np.roll(img, shift, axis=1))["score"] == pytest.approx(base, rel=1e-2)


def test_demo_maps_split_into_pool_and_excluded(tmp_path):
    paths = generate_demo_maps(tmp_path, 3, seed=0)
    assert [p.name for p in paths] == ["demo_00_overcast.hdr", "demo_01_gradient.hdr", "demo_02_sun.hdr"]
    scores = {e.path.name: e.score for e in scan_library(tmp_path)}
    assert scores["demo_00_overcast.hdr"] < 0.2
    assert scores["demo_01_gradient.hdr"] < 0.5 < scores["demo_02_sun.hdr"]
    pool = prepare_library(HdriConfig(library_dir=str(tmp_path), max_ambient_score=0.5))
    assert sorted(e.path.name for e in pool) == ["demo_00_overcast.hdr", "demo_01_gradient.hdr"]


def test_cache_keyed_by_name_size_mtime(tmp_path, monkeypatch):
    generate_demo_maps(tmp_path, 2, seed=1)
    scan_library(tmp_path)
    cache = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert len(cache) == 2 and all(k.startswith("demo_0") and k.count("|") == 2 for k in cache)
    calls = []
    real = hdri.ambient_score
    monkeypatch.setattr(hdri, "ambient_score", lambda img: calls.append(1) or real(img))
    scan_library(tmp_path)
    assert calls == []  # all from the cache
    path = tmp_path / "demo_00_overcast.hdr"
    write_hdr(path, np.ones((32, 64, 3)) * 2.0)
    os.utime(path, ns=(1, 10**18))
    entries = {e.path.name: e.score for e in scan_library(tmp_path)}
    assert calls == [1] and entries["demo_00_overcast.hdr"] < 1e-3  # the changed file was re-scored


def test_choice_deterministic_and_rotated(tmp_path):
    generate_demo_maps(tmp_path, 6, seed=0)
    cfg = HdriConfig(library_dir=str(tmp_path), max_ambient_score=0.5, strength=1.2)
    pool = prepare_library(cfg)
    envs = {uid: choose_environment(uid, cfg, seed=0, pool=pool) for uid in [f"asset{i}" for i in range(40)]}
    assert all(
        e["kind"] == "hdri" and os.path.isabs(e["path"]) and e["strength"] == 1.2 for e in envs.values()
    )
    assert all(
        "sun" not in os.path.basename(e["path"]) and 0 <= e["rotation_deg"] < 360 for e in envs.values()
    )
    assert len({e["path"] for e in envs.values()}) == 4  # every near-ambient map gets used
    assert len({round(e["rotation_deg"], 6) for e in envs.values()}) == 40
    again = choose_environment("asset7", cfg, seed=0)  # fresh scan, same draw
    assert again == envs["asset7"]
    assert choose_environment("asset7", cfg, seed=1) != envs["asset7"]


def test_sky_fallback(tmp_path):
    assert choose_environment("a", HdriConfig(), sky_strength=0.9) == {"kind": "sky", "strength": 0.9}
    generate_demo_maps(tmp_path, 3)
    only_sun = HdriConfig(library_dir=str(tmp_path), max_ambient_score=0.01)
    assert choose_environment("a", only_sun)["kind"] == "sky"
    assert choose_environment("a", HdriConfig(library_dir=str(tmp_path / "missing")))["kind"] == "sky"


def test_exr_maps(tmp_path):
    openexr = pytest.importorskip("OpenEXR", reason="OpenEXR not installed: .exr maps are skipped")
    img = _sun_map(64, 128).astype(np.float32)
    header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
    openexr.File(header, {"RGB": img}).write(str(tmp_path / "sun.exr"))
    write_hdr(tmp_path / "sun.hdr", img)
    scores = {e.path.name: e.score for e in scan_library(tmp_path)}
    assert scores["sun.exr"] == pytest.approx(scores["sun.hdr"], rel=1e-2)


def test_concurrent_writers_of_one_map_do_not_collide(tmp_path):
    """Two render jobs may generate the same demo map at once: each writes its own temporary file."""
    import threading

    img = np.ones((32, 64, 3), np.float32)
    errors = []
    for trial in range(10):
        barrier = threading.Barrier(4)

        def write(trial=trial, barrier=barrier):
            barrier.wait()
            try:
                write_hdr(tmp_path / f"m{trial}.hdr", img)
            except OSError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        np.testing.assert_allclose(read_hdr(tmp_path / f"m{trial}.hdr"), img, rtol=1 / 256)
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m{i}.hdr" for i in range(10)]  # no leftovers
