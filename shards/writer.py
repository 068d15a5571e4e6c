"""Atomic WebDataset shard writing: a shard is visible under its final name only once it is complete."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

#: Fixed member mtime so that the same samples give byte-identical shards.
_MTIME = 1_700_000_000


def _bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"field {name!r}: expected bytes or str, got {type(value).__name__} (encode it first)")


class ShardWriter:
    """Write samples (``__key__`` plus field name -> bytes) into ``path`` atomically.

    Samples go to ``<path>.partial``; closing without an exception fsyncs and renames it to ``path``.
    An exception inside the ``with`` block (or a killed process) leaves no file under the final name, so a
    shard that exists is complete. Fields are written in sorted order for reproducible shards.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self.partial, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._keys: set[str] = set()
        self.count = 0

    def write(self, sample: dict[str, Any]) -> None:
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"__key__ {key!r} must be a non-empty string without dots or slashes")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path.name}")
        for name in sorted(k for k in sample if not k.startswith("__")):
            data = _bytes(name, sample[name])
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size = len(data)
            info.mtime = _MTIME
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self.count += 1

    def close(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file. The tar is not closed (that writes its end blocks, which fails on a full
        disk, the usual reason to abort); the file is closed ignoring errors, then removed."""
        try:
            self._file.close()
        except OSError:
            pass
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a small file (a manifest, a JSON) atomically: temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
