"""Reading WebDataset shards: raw samples (field -> bytes) grouped by key, and decoded render samples."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shards.index import iter_members
from shards.render_schema import RenderSample, SchemaError, decode_render_sample

log = logging.getLogger(__name__)


def iter_raw_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield raw samples in shard order: {'__key__': key, '__url__': path, field: bytes, ...}.

    Members of one sample are consecutive (as WebDataset requires); a key that reappears later is an error
    (`shards.index` splits the names). A truncated or corrupt tar raises SchemaError after the samples read
    before the damage.
    """
    path = Path(path)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for key, field, member in iter_members(tar, path.name):
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": str(path)}
                fh = tar.extractfile(member)
                if fh is None:
                    raise SchemaError(f"{path.name}: cannot read member {member.name!r}")
                current[field] = fh.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SchemaError(f"{path.name}: unreadable tar ({exc})") from exc
    if current is not None:
        yield current


def iter_render_samples(
    path: str | Path, handler: Callable[[Exception, dict[str, Any]], None] | None = None
) -> Iterator[RenderSample]:
    """Decoded render samples; a bad sample raises, or goes to `handler(exc, raw)` and is skipped."""
    for raw in iter_raw_samples(path):
        try:
            yield decode_render_sample(raw)
        except SchemaError as exc:
            if handler is None:
                raise
            handler(exc, raw)


def list_keys(path: str | Path) -> list[str]:
    """Sample keys of a shard, in order, without decoding any image."""
    return [raw["__key__"] for raw in iter_raw_samples(path)]
