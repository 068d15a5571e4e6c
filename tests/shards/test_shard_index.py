"""shards.index (the one tar index), shards.layout paths and the one manifest writer."""

import io
import tarfile

import pytest

from shards.index import index_shards, index_tar, read_entry, split_member
from shards.layout import (
    latent_manifest_path,
    latent_shard_path,
    render_manifest_path,
    render_shard_path,
    shard_number,
    work_dir,
)
from shards.manifest import LATENT_COLUMNS, LATENT_STATUSES, read_manifest, write_manifest
from shards.reader import iter_raw_samples
from shards.render_schema import SchemaError
from shards.writer import ShardWriter


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_split_member_is_webdatasets_rule():
    assert split_member("abc.static.c2w.npy") == ("abc", "static.c2w.npy")
    assert split_member("dir/sub/abc.meta.json") == ("dir/sub/abc", "meta.json")
    assert split_member("a.b/c.png") == ("a.b/c", "png")  # dots in folders do not end the key
    with pytest.raises(SchemaError, match="no field extension"):
        split_member("dir/noext")


def test_index_offsets_read_back_the_bytes_the_stream_reader_sees(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "a.npy": bytes([i]) * (100 + i), "meta.json": f"{{{i}}}"})
    entries, error = index_tar(tmp_path / "s.tar")
    assert error is None
    assert [e.key for e in entries] == ["k0", "k1", "k2"]
    streamed = list(iter_raw_samples(tmp_path / "s.tar"))
    for entry, raw in zip(entries, streamed, strict=True):
        assert read_entry(entry) == raw
    assert read_entry(entries[1], ["meta.json"]) == {
        "__key__": "k1",
        "__url__": str(tmp_path / "s.tar"),
        "meta.json": b"{1}",
    }


def test_split_sample_and_duplicate_field_are_errors_for_every_reader(tmp_path):
    _tar(tmp_path / "split.tar", [("a.x", b"1"), ("b.x", b"2"), ("a.y", b"3")])
    _tar(tmp_path / "dup.tar", [("a.x", b"1"), ("a.x", b"2")])
    for name, match in (("split", "split or duplicated"), ("dup", "duplicate field")):
        entries, error = index_tar(tmp_path / f"{name}.tar")
        assert error is not None and match in error
        with pytest.raises(SchemaError, match=match):
            list(iter_raw_samples(tmp_path / f"{name}.tar"))
        with pytest.raises(SchemaError, match=match):
            index_shards([tmp_path / f"{name}.tar"])
    entries, _ = index_tar(tmp_path / "split.tar")
    assert [e.key for e in entries] == ["a"]  # b was being read when the error hit: dropped


def test_truncated_tar_keeps_the_complete_samples_before_the_damage(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "a.bin": bytes(3000), "b.bin": bytes(3000)})
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[:9000])  # inside k1's members
    entries, error = index_tar(tmp_path / "t.tar")
    assert [e.key for e in entries] == ["k0"]
    assert error.startswith("t.tar: unreadable tar after 1 samples")


def test_layout_paths():
    assert render_shard_path("o", 3).as_posix() == "o/renders/shard-000003.tar"
    assert latent_shard_path("o", 3).as_posix() == "o/latents/shard-000003.tar"
    assert render_manifest_path("o", 3).as_posix() == "o/manifests/shard-000003.parquet"
    assert latent_manifest_path("o", 3).as_posix() == "o/manifests/latents-000003.parquet"
    assert work_dir("o", 3).as_posix() == "o/work/shard-000003"
    assert shard_number(latent_shard_path("o", 123456)) == 123456
    for bad in ("shard-12.tar.partial", "shard-x.tar", "latents-000001.tar"):
        with pytest.raises(ValueError, match="not a shard-NNNNNN.tar"):
            shard_number(bad)


def test_one_manifest_writer_for_both_stages(tmp_path):
    rows = [
        {"shard": 2, "uid": "a", "status": "encoded", "reason": "", "detail": "", "num_images": 8},
        {
            "shard": 2,
            "uid": "",
            "status": "failed",
            "reason": "unreadable_tar",
            "detail": "x",
            "num_images": 0,
        },
    ]
    path = write_manifest(tmp_path / "m.parquet", rows, LATENT_COLUMNS, LATENT_STATUSES)
    assert read_manifest(path) == rows
    with pytest.raises(ValueError, match="status 'rendered'"):
        write_manifest(
            tmp_path / "m.parquet", [dict(rows[0], status="rendered")], LATENT_COLUMNS, LATENT_STATUSES
        )
