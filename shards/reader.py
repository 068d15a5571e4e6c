"""Reading WebDataset shards: raw samples (field -> bytes) grouped by key, and decoded render samples."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shards.index import index_tar, raise_problems, read_entry
from shards.render_schema import RenderSample, SchemaError, decode_render_sample

log = logging.getLogger(__name__)


def iter_raw_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield raw samples in shard order: {'__key__': key, '__url__': path, field: bytes, ...}.

    Through the one tar index (`shards.index`): after the readable samples, a damaged or incomplete tar, or
    a rejected sample (duplicated key or field), raises SchemaError naming the file.
    """
    index = index_tar(path)
    for entry in index.entries:
        yield read_entry(entry)
    raise_problems(index)


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
    """Sample keys of a shard, in order, without reading any member data."""
    index = index_tar(path)
    raise_problems(index)
    return [entry.key for entry in index.entries]
