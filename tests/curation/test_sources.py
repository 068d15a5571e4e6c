"""Asset sources on offline fixtures that mimic the procedural index and the Objaverse annotation tables."""

import gzip
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import sources
from curation.sources import (
    AssetFetchError,
    AssetRecord,
    AssetSourceError,
    fetch_asset,
    license_allowed,
    list_assets,
    normalize_license,
)
from profiles.schema import AssetsConfig


def test_record_uid_validated():
    AssetRecord(uid="abc_DEF-123", source="local")
    for bad in ("a.b", "a/b", "", "é", "a b"):
        with pytest.raises(ValueError, match="uid"):
            AssetRecord(uid=bad, source="local")


@pytest.mark.parametrize(
    "raw,norm",
    [
        ("by", "by"),
        ("by-nc", "by-nc"),
        ("CC-BY-4.0", "by"),
        ("CC BY-SA 4.0", "by-sa"),
        ("cc0-1.0", "cc0"),
        ("Creative Commons Zero v1.0 Universal", "cc0"),
        ("MIT License", "mit"),
        ("Apache License 2.0", "apache-2.0"),
        (None, "unknown"),
        (float("nan"), "unknown"),
    ],
)
def test_normalize_license(raw, norm):
    assert normalize_license(raw) == norm


def test_license_allow_list_is_exact():
    allow = AssetsConfig().licenses
    assert license_allowed("cc-by-4.0", allow) and license_allowed("by-sa", allow)
    assert license_allowed("MIT License", allow) and license_allowed("cc0", allow)
    for bad in ("by-nc", "by-nc-sa", "by-nd", "ed", "unknown", None, "GNU General Public License v3.0"):
        assert not license_allowed(bad, allow), bad


def _fake_procedural(dir: Path, names=("walker", "balloon", "statue")) -> None:
    dir.mkdir(parents=True)
    expected = {"walker": "render", "balloon": "inconsistent_scale", "statue": "static"}
    entries = []
    for name in names:
        (dir / f"{name}.glb").write_bytes(b"glTF")
        entries.append(
            {"name": name, "file": f"{name}.glb", "kind": "k", "expected": expected[name], "license": "cc0"}
        )
    (dir / "index.json").write_text(json.dumps(entries))


def test_procedural_from_existing_index(tmp_path):
    cfg = AssetsConfig(source="procedural", cache_dir=str(tmp_path), seed=3)
    _fake_procedural(tmp_path / "procedural-seed3")
    recs = list_assets(cfg)
    assert [r.uid for r in recs] == ["balloon", "statue", "walker"]
    assert {r.uid: r.expected for r in recs}["balloon"] == "inconsistent_scale"
    assert all(r.license == "cc0" and r.source == "procedural" for r in recs)
    assert fetch_asset(recs[0], cfg) == tmp_path / "procedural-seed3" / "balloon.glb"
    assert [
        r.uid
        for r in list_assets(AssetsConfig(source="procedural", cache_dir=str(tmp_path), seed=3, limit=2))
    ] == [
        "balloon",
        "statue",
    ]
    # procedural_count keeps the generator's first N (index order), then sorts
    cfg2 = AssetsConfig(source="procedural", cache_dir=str(tmp_path), seed=3, procedural_count=1)
    assert [r.uid for r in list_assets(cfg2)] == ["walker"]


FAKE_GENERATOR = """
import argparse, json, pathlib, sys
p = argparse.ArgumentParser(); p.add_argument('--out'); p.add_argument('--seed', type=int)
a = p.parse_args()
out = pathlib.Path(a.out); out.mkdir(parents=True, exist_ok=True)
(out / 'calls.txt').open('a').write(str(a.seed) + '\\n')
(out / 'blob.glb').write_bytes(b'glTF')
(out / 'index.json').write_text(json.dumps([{'name': 'blob', 'file': 'blob.glb', 'kind': 'shape_key',
    'expected': 'render', 'license': 'cc0'}]))
"""


def test_procedural_generator_runs_once_when_index_missing(tmp_path, monkeypatch):
    fake_root = tmp_path / "repo"
    (fake_root / "blender_scripts").mkdir(parents=True)
    (fake_root / "blender_scripts" / "__init__.py").write_text("")
    (fake_root / "blender_scripts" / "procedural_assets.py").write_text(FAKE_GENERATOR)
    monkeypatch.setattr(sources, "REPO_ROOT", fake_root)
    cfg = AssetsConfig(source="procedural", cache_dir=str(tmp_path / "cache"), seed=7)
    recs = list_assets(cfg)
    assert [r.uid for r in recs] == ["blob"]
    list_assets(cfg)
    out = tmp_path / "cache" / "procedural-seed7"
    assert (out / "calls.txt").read_text().split() == ["7"]  # the second listing reused the index
    # a deleted asset file triggers regeneration at fetch time
    (out / "blob.glb").unlink()
    assert fetch_asset(recs[0], cfg).is_file()
    assert (out / "calls.txt").read_text().split() == ["7", "7"]


def test_local_folder(tmp_path):
    root = tmp_path / "assets"
    for rel in ("chars/Fox.glb", "chars/Fox.fbx", "props/lamp one.obj", "scene.blend", ".hidden/x.glb"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "notes.txt").write_text("not an asset")
    (root / "chars" / "Fox.glb.license").write_text("\nCC-BY-4.0\n")
    (root / "licenses.json").write_text(json.dumps({"props/lamp one.obj": "cc0", "scene.blend": "by-nc"}))
    cfg = AssetsConfig(source="local", local_dir=str(root))
    recs = {r.uid: r for r in list_assets(cfg)}
    assert sorted(recs) == ["chars_Fox_fbx", "chars_Fox_glb", "props_lamp_one", "scene"]
    assert recs["chars_Fox_glb"].license == "CC-BY-4.0"
    assert recs["chars_Fox_fbx"].license == "unknown"
    assert recs["props_lamp_one"].license == "cc0"
    assert recs["scene"].license == "by-nc"
    assert recs["props_lamp_one"].annotations["relative_path"] == "props/lamp one.obj"
    assert fetch_asset(recs["scene"], cfg) == (root / "scene.blend").resolve()
    cfg_default = AssetsConfig(source="local", local_dir=str(root), local_license="cc-by-4.0")
    assert {r.uid: r.license for r in list_assets(cfg_default)}["chars_Fox_fbx"] == "cc-by-4.0"
    (root / "scene.blend").unlink()
    with pytest.raises(AssetFetchError, match="'scene'"):
        fetch_asset(recs["scene"], cfg)
    with pytest.raises(AssetSourceError, match="not a folder"):
        list_assets(AssetsConfig(source="local", local_dir=str(tmp_path / "nope")))


OBJAVERSE_ROWS = {
    "0123456789abcdef0123456789abcdef": {
        "name": "Dancing robot",
        "animationCount": 2,
        "license": "by",
        "vertexCount": 5000,
        "faceCount": 9000,
        "viewerUrl": "https://sketchfab.com/3d-models/0123456789abcdef0123456789abcdef",
        "tags": [{"name": "robot"}],
    },
    "ffffffffffffffffffffffffffffffff": {"name": "Chair", "animationCount": 0, "license": "cc0"},
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": {"name": "Bird", "animationCount": 1, "license": "by-nc"},
}


@pytest.mark.parametrize("fmt", ["json", "json.gz", "parquet"])
def test_objaverse_annotations_table(tmp_path, fmt):
    path = tmp_path / f"ann.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(OBJAVERSE_ROWS))
    elif fmt == "json.gz":
        with gzip.open(path, "wt") as fh:
            json.dump(OBJAVERSE_ROWS, fh)
    else:
        rows = [
            {"uid": k, **{f: v.get(f) for f in ("name", "animationCount", "license")}}
            for k, v in OBJAVERSE_ROWS.items()
        ]
        pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = AssetsConfig(source="objaverse", objaverse_annotations=str(path), cache_dir=str(tmp_path / "c"))
    recs = list_assets(cfg)
    assert [r.uid for r in recs] == ["0123456789abcdef0123456789abcdef", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
    assert [r.license for r in recs] == ["by", "by-nc"]
    assert recs[0].annotations["animationCount"] == 2 and recs[0].annotations["name"] == "Dancing robot"
    assert all(r.path is None and r.source == "objaverse" for r in recs)
    json.dumps([r.to_json() for r in recs])  # annotations are plain JSON


def test_objaverse_fetch_offline_fails_fast_and_names_uid(tmp_path):
    cfg = AssetsConfig(source="objaverse", cache_dir=str(tmp_path), fetch_timeout_s=5.0)
    rec = AssetRecord(uid="0123456789abcdef0123456789abcdef", source="objaverse", license="by")
    start = time.monotonic()
    with pytest.raises(AssetFetchError, match="0123456789abcdef0123456789abcdef") as info:
        fetch_asset(rec, cfg)
    assert info.value.uid == rec.uid
    assert time.monotonic() - start < 15.0
    # already in the cache: no network needed
    cached = tmp_path / "hf-objaverse-v1" / "glbs" / "000-001" / f"{rec.uid}.glb"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"glTF")
    assert fetch_asset(rec, cfg) == cached


def _xl_table(path: Path) -> None:
    rows = [
        {
            "fileIdentifier": "https://github.com/org/repo/blob/abc123/models/walk.glb",
            "source": "github",
            "license": "MIT License",
            "fileType": "glb",
            "sha256": "a" * 64,
            "metadata": "{}",
        },
        {  # same content in another repo: one record
            "fileIdentifier": "https://github.com/zzz/fork/blob/def/walk.glb",
            "source": "github",
            "license": "MIT License",
            "fileType": "glb",
            "sha256": "a" * 64,
            "metadata": "{}",
        },
        {
            "fileIdentifier": "https://github.com/org/repo/blob/abc123/models/chair.obj",
            "source": "github",
            "license": None,
            "fileType": "obj",
            "sha256": "b" * 64,
            "metadata": "{}",
        },
        {
            "fileIdentifier": "https://github.com/org/other/blob/abc/run.fbx",
            "source": "github",
            "license": None,
            "fileType": "fbx",
            "sha256": "c" * 64,
            "metadata": json.dumps({"animation_count": 0}),
        },
        {
            "fileIdentifier": "https://github.com/org/other/blob/abc/jump.blend",
            "source": "github",
            "license": "Creative Commons Zero v1.0 Universal",
            "fileType": "blend",
            "sha256": "d" * 64,
            "metadata": json.dumps({"animation_count": 3}),
        },
        {
            "fileIdentifier": "https://www.thingiverse.com/thing:1/file:2",
            "source": "thingiverse",
            "license": "cc0",
            "fileType": "stl",
            "sha256": "e" * 64,
            "metadata": "{}",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_objaverse_xl_github_subset(tmp_path):
    _xl_table(tmp_path / "xl.parquet")
    cfg = AssetsConfig(
        source="objaverse_xl",
        objaverse_annotations=str(tmp_path / "xl.parquet"),
        cache_dir=str(tmp_path / "cache"),
        fetch_timeout_s=5.0,
    )
    recs = {r.uid: r for r in list_assets(cfg)}
    assert sorted(recs) == ["a" * 64, "d" * 64]  # obj, zero-animation and non-github rows dropped
    assert recs["a" * 64].url == "https://github.com/org/repo/blob/abc123/models/walk.glb"
    assert recs["a" * 64].license == "MIT License" and license_allowed(recs["a" * 64].license, cfg.licenses)
    assert recs["d" * 64].annotations["animationCount"] == 3
    start = time.monotonic()
    with pytest.raises(AssetFetchError, match="a{64}"):
        fetch_asset(recs["a" * 64], cfg)
    assert time.monotonic() - start < 15.0
    local = tmp_path / "cache" / "github" / "repos" / "org" / "repo" / "models" / "walk.glb"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"glTF")
    assert fetch_asset(recs["a" * 64], cfg) == local


def test_duplicate_uids_rejected(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"uid": "x", "animationCount": 1}, {"uid": "x", "animationCount": 2}]))
    with pytest.raises(AssetSourceError, match="duplicate asset uid 'x'"):
        list_assets(AssetsConfig(source="objaverse", objaverse_annotations=str(path)))
