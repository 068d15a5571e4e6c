import json
import tarfile

import numpy as np
import pytest

from shards.contact_sheet import contact_sheet
from shards.inspect import main as inspect_main
from shards.reader import iter_raw_samples, iter_render_samples, list_keys
from shards.render_schema import (
    SCHEMA_VERSION,
    SchemaError,
    decode_render_sample,
    encode_render_sample,
    npy_bytes,
)
from shards.writer import ShardWriter
from tests.synthetic import make_render_sample


def test_write_read_round_trip_is_exact(tmp_path):
    samples = [make_render_sample(f"a{i}", seed=i) for i in range(3)]
    with ShardWriter(tmp_path / "s.tar") as writer:
        for s in samples:
            writer.write(encode_render_sample(s))
    got = list(iter_render_samples(tmp_path / "s.tar"))
    assert [g.key for g in got] == ["a0", "a1", "a2"]
    for want, have in zip(samples, got):
        for orbit in ("static", "dynamic"):
            np.testing.assert_array_equal(want.images[orbit], have.images[orbit])
            np.testing.assert_array_equal(want.c2w[orbit], have.c2w[orbit])
            np.testing.assert_array_equal(want.angles[orbit], have.angles[orbit])
        assert have.meta["schema_version"] == SCHEMA_VERSION


def test_same_samples_give_identical_bytes(tmp_path):
    for name in ("x.tar", "y.tar"):
        with ShardWriter(tmp_path / name) as writer:
            writer.write(encode_render_sample(make_render_sample("k")))
    assert (tmp_path / "x.tar").read_bytes() == (tmp_path / "y.tar").read_bytes()


def test_failed_write_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s.tar") as writer:
            writer.write(encode_render_sample(make_render_sample("k")))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_key_rejected(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as writer:
        writer.write(encode_render_sample(make_render_sample("k")))
        with pytest.raises(ValueError, match="duplicate"):
            writer.write(encode_render_sample(make_render_sample("k")))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("static.c2w.npy", npy_bytes(np.zeros((2, 4, 4), np.float64)), "dtype"),
        ("static.angles.npy", npy_bytes(np.zeros((3, 3), np.float32)), "shape"),
        ("static.c2w.npy", npy_bytes(np.zeros((2, 4, 4), np.float32)), "orthonormal"),
        ("dynamic.v01.f02.png", b"not a png", "dynamic.v01.f02.png"),
        ("meta.json", b"{", "meta.json"),
    ],
)
def test_schema_names_the_bad_field(field, value, match):
    raw = encode_render_sample(make_render_sample("k"))
    raw[field] = value
    with pytest.raises(SchemaError, match=match):
        decode_render_sample(raw)


def test_missing_and_extra_fields_rejected():
    raw = encode_render_sample(make_render_sample("k"))
    del raw["static.v00.f01.png"]
    with pytest.raises(SchemaError, match="static.v00.f01.png"):
        decode_render_sample(raw)
    raw = encode_render_sample(make_render_sample("k"))
    raw["extra.txt"] = b"x"
    with pytest.raises(SchemaError, match="extra.txt"):
        decode_render_sample(raw)
    raw = encode_render_sample(make_render_sample("k"))
    meta = json.loads(raw["meta.json"])
    meta["uid"] = "other"
    raw["meta.json"] = json.dumps(meta).encode()
    with pytest.raises(SchemaError, match="uid"):
        decode_render_sample(raw)


def test_truncated_shard_keeps_earlier_samples_then_fails(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as writer:
        for i in range(3):
            writer.write(encode_render_sample(make_render_sample(f"a{i}", res=32, seed=i)))
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: int(len(data) * 0.6)])
    keys = []
    with pytest.raises(SchemaError, match="t.tar"):
        for raw in iter_raw_samples(tmp_path / "t.tar"):
            keys.append(raw["__key__"])
    assert keys == ["a0"]


def test_inspect_validates_and_writes_contact_sheets(tmp_path, capsys):
    shard = tmp_path / "renders" / "shard-000000.tar"
    with ShardWriter(shard) as writer:
        writer.write(encode_render_sample(make_render_sample("good")))
        bad = encode_render_sample(make_render_sample("bad"))
        bad["static.v00.f00.png"] = b"junk"
        writer.write(bad)
    assert list_keys(shard) == ["good", "bad"]
    assert inspect_main([str(shard)]) == 1
    err = capsys.readouterr().err
    assert "bad" in err and "static.v00.f00.png" in err
    sheet = tmp_path / "contact_sheets" / "good.png"
    assert sheet.is_file() and not (tmp_path / "contact_sheets" / "bad.png").exists()


def test_contact_sheet_layout():
    sample = make_render_sample("k", views=3, frames=4, res=16)
    sheet = contact_sheet(sample, thumb=20, pad=2)
    # two orbits stacked; each block: 14 px label + pad + V rows of (thumb + pad)
    assert sheet.height == 2 * (14 + 2 + 3 * 22)
    assert sheet.width == 4 * 22 + 2 + 48


def test_tar_members_follow_webdataset_naming(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as writer:
        writer.write(encode_render_sample(make_render_sample("k", views=1, frames=1)))
    names = tarfile.open(tmp_path / "s.tar").getnames()
    assert "k.static.v00.f00.png" in names and "k.meta.json" in names
    import webdataset as wds

    (sample,) = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False).decode("rgba8"))
    assert sample["__key__"] == "k" and sample["static.v00.f00.png"].shape == (16, 16, 4)
