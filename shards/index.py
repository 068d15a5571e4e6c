"""The one tar index of WebDataset shards: how member names split into (sample key, field), and where each
sample's members lie in the file. Every reader of our shards goes through it (shards.reader streams samples,
curation.encode_latents reads render PNGs by byte range, model.data reads latent samples at random).

The rule is webdataset's: a member ``dir/key.field.ext`` belongs to sample ``dir/key`` as field
``field.ext`` (the key ends at the first dot of the base name); the members of one sample are consecutive,
so a key that comes back later, or a field given twice, is an error (a split or duplicated sample).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shards.render_schema import SchemaError


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, field): ``"a/b.static.c2w.npy"`` -> ``("a/b", "static.c2w.npy")``."""
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    if "." not in base:
        raise SchemaError(f"tar member {name!r} has no field extension")
    key, field = base.split(".", 1)
    return prefix + key, field


def iter_members(tar: tarfile.TarFile, label: str) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, field, member) of every file member, in tar order; SchemaError (naming ``label``) on a sample
    whose members are not consecutive or a field given twice."""
    seen: set[str] = set()
    current: str | None = None
    fields: set[str] = set()
    for member in tar:
        if not member.isfile():
            continue
        key, field = split_member(member.name)
        if key != current:
            if key in seen:
                raise SchemaError(f"{label}: sample {key!r} is split or duplicated")
            seen.add(key)
            current, fields = key, set()
        if field in fields:
            raise SchemaError(f"{label}: duplicate field {field!r} in sample {key!r}")
        fields.add(field)
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


def index_tar(path: str | Path) -> tuple[list[SampleEntry], str | None]:
    """Scan the tar headers (no member data is read): (every complete sample, an error message or None).

    A damaged tar gives the samples before the damage and the error; the sample being read when the damage
    hit is dropped (its members may be incomplete).
    """
    path = Path(path)
    entries: list[SampleEntry] = []
    key: str | None = None
    members: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for k, field, m in iter_members(tar, path.name):
                if k != key:
                    if key is not None:
                        entries.append(SampleEntry(str(path), key, tuple(members)))
                    key, members = k, []
                members.append((field, m.offset_data, m.size))
        if key is not None:
            entries.append(SampleEntry(str(path), key, tuple(members)))
    except (tarfile.TarError, EOFError, OSError, SchemaError) as exc:
        return entries, f"{path.name}: unreadable tar after {len(entries)} samples ({exc})"
    return entries, None


def index_shards(paths: Iterable[str | Path]) -> list[SampleEntry]:
    """Every sample of every shard, in order; a damaged shard raises SchemaError."""
    entries: list[SampleEntry] = []
    for path in paths:
        found, error = index_tar(path)
        if error:
            raise SchemaError(error)
        entries.extend(found)
    return entries


def read_entry(entry: SampleEntry, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The raw sample (``__key__``, ``__url__``, field -> bytes) of an entry, by seeking into its tar;
    ``fields``: only these (default all). A member shorter than its header says raises SchemaError."""
    wanted = None if fields is None else set(fields)
    raw: dict[str, Any] = {"__key__": entry.key, "__url__": entry.path}
    with open(entry.path, "rb") as fh:
        for name, offset, size in entry.members:
            if wanted is not None and name not in wanted:
                continue
            fh.seek(offset)
            raw[name] = fh.read(size)
            if len(raw[name]) != size:
                raise SchemaError(f"{name}: truncated ({len(raw[name])} of {size} bytes)")
    return raw
