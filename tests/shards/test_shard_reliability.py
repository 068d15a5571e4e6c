"""Issue 13, shard side: completeness (inspect), malformed and oversized meta.json, abort on a full disk."""

from __future__ import annotations

import errno
import json
import tarfile

import pytest

from shards.inspect import main as inspect_main
from shards.render_schema import SchemaError, decode_render_sample, encode_render_sample, parse_meta
from shards.writer import ShardWriter
from tests.synthetic import make_render_sample


def _shard(path, n=3, **raw_edits):
    with ShardWriter(path) as w:
        for i in range(n):
            raw = encode_render_sample(make_render_sample(f"a{i}", views=2, frames=1, res=8, seed=i))
            w.write({**raw, **raw_edits.get(f"a{i}", {})})
    return path


def test_inspect_reports_a_tar_cut_at_a_sample_boundary(tmp_path, capsys):
    data = _shard(tmp_path / "s.tar").read_bytes()
    with tarfile.open(tmp_path / "s.tar") as tar:
        cut = next(m.offset for m in tar if m.name.startswith("a2."))
    (tmp_path / "t.tar").write_bytes(data[:cut])
    assert inspect_main([str(tmp_path / "t.tar"), "--no-sheets"]) == 1
    out = capsys.readouterr()
    assert "2 valid, 1 invalid" in out.out
    assert "INVALID t.tar: incomplete tar (no end-of-archive marker after 2 samples)" in out.err


def _meta(**changes):
    meta = dict(make_render_sample("k").meta, **changes)
    return {"__key__": "k", "meta.json": json.dumps(meta).encode()}


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"__key__": "k", "meta.json": b"[1, 2]"}, "expected a JSON object, got list"),
        ({"__key__": "k", "meta.json": b'"uid"'}, "expected a JSON object, got str"),
        (_meta(num_views="abc"), "num_views 'abc' must be an integer"),
        (_meta(num_views=True), "num_views True must be an integer"),
        (_meta(num_frames=2.5), "num_frames 2.5 must be an integer"),
        (_meta(resolution=10**9), "resolution 1000000000 must be an integer in"),
        (_meta(resolution=0), "resolution 0 must be an integer in"),
        (_meta(num_views=100000, num_frames=100000), "num_views 100000 must be an integer"),
        (_meta(num_views=200, num_frames=200), "200 views x 200 frames exceeds"),
        (_meta(orbits="static"), "orbits 'static' must be"),
        (_meta(mode="movie"), "mode 'movie'"),
    ],
)
def test_malformed_or_oversized_meta_is_a_schema_error(raw, match):
    # item 6: a SchemaError (one sample fails), never a TypeError/ValueError that stops a job, and no
    # allocation sized by an unchecked number
    with pytest.raises(SchemaError, match=match):
        parse_meta(raw)
    with pytest.raises(SchemaError, match=match):
        decode_render_sample(raw)


def test_inspect_counts_a_malformed_meta_as_one_invalid_sample(tmp_path, capsys):
    edits = {"a1": {"meta.json": b'{"uid": "a1", "num_views": "abc"}'}, "a2": {"meta.json": b"[]"}}
    shard = _shard(tmp_path / "s.tar", **edits)
    assert inspect_main([str(shard), "--no-sheets"]) == 1
    out = capsys.readouterr()
    assert "1 valid, 2 invalid" in out.out
    assert "s.tar:a2: meta.json: expected a JSON object" in out.err


class _FullDisk:
    """A file on a full disk: every write, flush and close fails with ENOSPC (close still closes)."""

    def __init__(self, fh):
        self.fh = fh

    def _full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    write = flush = _full

    def tell(self):
        return self.fh.tell()

    def fileno(self):
        return self.fh.fileno()

    def close(self):
        self.fh.close()
        self._full()


def test_abort_on_a_full_disk_leaves_no_partial(tmp_path):
    # item 11 (ShardWriter): closing the tar writes its end blocks, which fails on a full disk
    w = ShardWriter(tmp_path / "s.tar")
    w.write({"__key__": "a", "x.bin": b"1"})
    w._file = w._tar.fileobj = _FullDisk(w._file)
    with pytest.raises(OSError, match="No space"):
        with w:
            w.write({"__key__": "b", "x.bin": bytes(100000)})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
