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
    index = index_tar(tmp_path / "s.tar")
    entries = index.entries
    assert index.error is None and index.rejected == []
    assert [e.key for e in entries] == ["k0", "k1", "k2"]
    streamed = list(iter_raw_samples(tmp_path / "s.tar"))
    for entry, raw in zip(entries, streamed, strict=True):
        assert read_entry(entry) == raw
    assert read_entry(entries[1], ["meta.json"]) == {
        "__key__": "k1",
        "__url__": str(tmp_path / "s.tar"),
        "meta.json": b"{1}",
    }


def test_a_duplicated_key_or_field_rejects_that_sample_only(tmp_path):
    # item 5: the good sample before a duplicate (here b) and the samples after it are kept
    _tar(
        tmp_path / "dup.tar",
        [("a.x", b"1"), ("b.x", b"2"), ("b.x", b"2"), ("a.x", b"3"), ("c.x", b"4"), ("c.y", b"5")],
    )
    index = index_tar(tmp_path / "dup.tar")
    assert index.error is None
    assert [e.key for e in index.entries] == ["a", "b", "c"]
    assert index.rejected == [
        ("b", "duplicate sample key (from its field 'x' on; the first copy is kept)"),
        ("a", "duplicate sample key (from its field 'x' on; the first copy is kept)"),
    ]
    assert read_entry(index.entries[0]) == {"__key__": "a", "__url__": str(tmp_path / "dup.tar"), "x": b"1"}
    # the strict readers still refuse the shard, after its readable samples, naming the sample
    with pytest.raises(SchemaError, match="dup.tar: sample 'b': duplicate sample key"):
        list(iter_raw_samples(tmp_path / "dup.tar"))
    with pytest.raises(SchemaError, match="duplicate sample key"):
        index_shards([tmp_path / "dup.tar"])


def test_truncated_tar_keeps_the_complete_samples_before_the_damage(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "a.bin": bytes(3000), "b.bin": bytes(3000)})
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[:9000])  # inside k1's members
    index = index_tar(tmp_path / "t.tar")
    assert [e.key for e in index.entries] == ["k0"]
    assert index.error.startswith("t.tar: unreadable tar after 1 samples")


def _sample_boundaries(path):
    """Byte offsets at which each sample's first header starts, and the end of the last member."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        end = tar.offset
    starts, seen = [], set()
    for m in members:
        key = m.name.split(".")[0]
        if key not in seen:
            seen.add(key)
            starts.append(m.offset)
    return starts, end


def test_a_tar_cut_between_two_samples_is_incomplete_for_every_reader(tmp_path):
    # item 4: a cut at a sample boundary leaves a tar that tarfile reads without complaint
    with ShardWriter(tmp_path / "s.tar") as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "a.bin": bytes(700), "b.bin": bytes(10)})
    data = (tmp_path / "s.tar").read_bytes()
    starts, end = _sample_boundaries(tmp_path / "s.tar")
    assert index_tar(tmp_path / "s.tar").error is None
    for cut, kept in ((starts[2], 2), (end, 3), (end + 512, 3)):  # before k2; after k2, one zero block
        (tmp_path / "t.tar").write_bytes(data[:cut])
        with tarfile.open(tmp_path / "t.tar") as tar:  # what every reader used to trust
            assert len({m.name.split(".")[0] for m in tar}) == kept
        index = index_tar(tmp_path / "t.tar")
        assert [e.key for e in index.entries] == [f"k{i}" for i in range(kept)]
        assert index.error == f"t.tar: incomplete tar (no end-of-archive marker after {kept} samples)"
        with pytest.raises(SchemaError, match="incomplete tar"):
            list(iter_raw_samples(tmp_path / "t.tar"))
        with pytest.raises(SchemaError, match="incomplete tar"):
            index_shards([tmp_path / "t.tar"])
    empty = tmp_path / "e.tar"
    ShardWriter(empty).close()
    assert index_tar(empty).error is None and index_tar(empty).entries == []


def test_a_shard_with_fewer_samples_than_its_manifest_is_incomplete(tmp_path):
    # a whole tar (end marker and all) that is not the one its stage wrote: the manifest's count tells
    out = tmp_path / "out"
    with ShardWriter(latent_shard_path(out, 0)) as w:
        w.write({"__key__": "a", "x.bin": b"1"})
    rows = [
        {"shard": 0, "uid": uid, "status": status, "reason": "", "detail": "", "num_images": 1}
        for uid, status in (("a", "encoded"), ("b", "encoded"), ("c", "failed"))
    ]
    write_manifest(latent_manifest_path(out, 0), rows, LATENT_COLUMNS, LATENT_STATUSES)
    index = index_tar(latent_shard_path(out, 0))
    assert index.error == "shard-000000.tar: holds 1 samples, its manifest says 2"
    write_manifest(latent_manifest_path(out, 0), rows[::2], LATENT_COLUMNS, LATENT_STATUSES)
    assert index_tar(latent_shard_path(out, 0)).error is None


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
