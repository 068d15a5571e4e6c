"""The one tar index of WebDataset shards: how member names split into (sample key, field), and where each
sample's members lie in the file. Every reader of our shards goes through it (shards.reader streams samples,
curation.encode_latents reads render PNGs by byte range, model.data reads latent samples at random).

The rule is webdataset's: a member ``dir/key.field.ext`` belongs to sample ``dir/key`` as field
``field.ext`` (the key ends at the first dot of the base name); the members of one sample are consecutive.
A key that comes back later (a split or duplicated sample) or a field given twice starts a copy of that
sample: the copy is rejected with its reason, the first occurrence and every other sample are kept.
A shard is complete only with its end-of-archive marker and, where its stage wrote a manifest, as many
samples as the manifest says: a tar cut exactly between two samples reads as an error, not a smaller shard.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.layout import manifest_for_shard
from shards.manifest import read_manifest
from shards.render_schema import SchemaError


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, field): ``"a/b.static.c2w.npy"`` -> ``("a/b", "static.c2w.npy")``."""
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    if "." not in base:
        raise SchemaError(f"tar member {name!r} has no field extension")
    key, field = base.split(".", 1)
    return prefix + key, field


def iter_members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, field, member) of every file member, in tar order (grouping and duplicates: `index_tar`)."""
    for member in tar:
        if member.isfile():
            key, field = split_member(member.name)
            yield key, field, member


@dataclass(frozen=True)
class SampleEntry:
    """Where one sample's members lie in its tar: (field, data offset, size) in tar order."""

    path: str
    key: str
    members: tuple[tuple[str, int, int], ...]

    def fields(self) -> dict[str, tuple[int, int]]:
        """field -> (offset, size)."""
        return {name: (offset, size) for name, offset, size in self.members}


@dataclass
class TarIndex:
    """What `index_tar` found in one shard."""

    path: str
    entries: list[SampleEntry] = field(default_factory=list)
    """The samples to read, in tar order."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(key, reason) of the copies left out: a key seen before in the tar, or a field given twice (the
    first copy is kept). The other samples of the shard are unaffected."""
    error: str | None = None
    """Set when the tar itself is damaged or incomplete (names the file); `entries` are the samples before
    the damage."""


END_MARKER = 2 * tarfile.BLOCKSIZE
"""A complete tar ends with two zero blocks (tarfile and GNU tar write them; ShardWriter closes with them):
without them a tar cut exactly between two samples would read as a smaller, valid shard."""


def _end_marker_ok(path: Path, offset: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(offset)
        tail = fh.read(END_MARKER)
    return len(tail) == END_MARKER and not any(tail)


def manifest_count(path: str | Path) -> int | None:
    """Samples a shard should hold by the manifest its stage wrote beside it (``shards.layout``), or None
    where there is no readable manifest (a shard made by hand, or one whose manifest is not written yet)."""
    found = manifest_for_shard(path)
    if found is None:
        return None
    manifest, status = found
    try:
        rows = read_manifest(manifest)
    except Exception:  # pyarrow raises several types; no count is better than a false alarm
        return None
    return sum(row.get("status") == status for row in rows)


def index_tar(path: str | Path) -> TarIndex:
    """Scan the tar headers (no member data is read) into a TarIndex and check that the tar is complete:
    the end-of-archive marker, and the sample count of its manifest where there is one.

    A damaged tar gives the samples before the damage and the error; the sample being read when the damage
    hit is dropped (its members may be incomplete).
    """
    path = Path(path)
    out = TarIndex(str(path))
    seen: set[str] = set()
    runs: list[tuple[str, list[tuple[str, int, int]], str | None]] = []
    key: str | None = None
    members: list[tuple[str, int, int]] = []
    problem: str | None = None

    def close_run() -> None:
        if key is not None:
            runs.append((key, members, problem))

    try:
        with tarfile.open(path, mode="r:") as tar:
            for k, name, m in iter_members(tar):
                # a field that comes again starts another copy of the sample (a key written twice in a
                # row); a key that comes back after another sample is a copy too
                if k != key or any(name == f for f, _, _ in members):
                    close_run()
                    key, members, problem = k, [], None
                    if k in seen:
                        problem = f"duplicate sample key (from its field {name!r} on; the first copy is kept)"
                    seen.add(k)
                members.append((name, m.offset_data, m.size))
            end = tar.offset
        close_run()
        if not _end_marker_ok(path, end):
            out.error = f"{path.name}: incomplete tar (no end-of-archive marker after {len(runs)} samples)"
    except (tarfile.TarError, EOFError, OSError, SchemaError) as exc:
        out.error = f"{path.name}: unreadable tar after {len(runs)} samples ({exc})"
    for k, ms, why in runs:
        if why is None:
            out.entries.append(SampleEntry(str(path), k, tuple(ms)))
        else:
            out.rejected.append((k, why))
    if out.error is None:
        expected = manifest_count(path)
        if expected is not None and expected != len(runs):
            out.error = f"{path.name}: holds {len(runs)} samples, its manifest says {expected}"
    return out


def index_shards(paths: Iterable[str | Path]) -> list[SampleEntry]:
    """Every sample of every shard, in order; a damaged or incomplete shard or a rejected sample raises
    SchemaError (readers that skip bad samples use `index_tar`)."""
    entries: list[SampleEntry] = []
    for path in paths:
        index = index_tar(path)
        raise_problems(index)
        entries.extend(index.entries)
    return entries


def raise_problems(index: TarIndex) -> None:
    """SchemaError for the first problem of a shard (its damage, else its first rejected sample)."""
    if index.error:
        raise SchemaError(index.error)
    if index.rejected:
        key, why = index.rejected[0]
        raise SchemaError(f"{Path(index.path).name}: sample {key!r}: {why}")


def read_entry(
    entry: SampleEntry, fields: Iterable[str] | None = None, max_bytes: int | None = None
) -> dict[str, Any]:
    """The raw sample (``__key__``, ``__url__``, field -> bytes) of an entry, by seeking into its tar;
    ``fields``: only these (default all); ``max_bytes``: only the first bytes of each (e.g. a .npy header).
    A member shorter than its header says raises SchemaError."""
    wanted = None if fields is None else set(fields)
    raw: dict[str, Any] = {"__key__": entry.key, "__url__": entry.path}
    with open(entry.path, "rb") as fh:
        for name, offset, size in entry.members:
            if wanted is not None and name not in wanted:
                continue
            fh.seek(offset)
            want = size if max_bytes is None else min(size, max_bytes)
            raw[name] = fh.read(want)
            if len(raw[name]) != want:
                raise SchemaError(f"{name}: truncated ({len(raw[name])} of {size} bytes)")
    return raw
