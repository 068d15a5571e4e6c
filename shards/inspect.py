"""Validate render shards and write a contact sheet per sample.

Usage: python -m shards.inspect outputs/demo/renders/shard-000000.tar [--out DIR]

Exit status 0 when every sample of every shard is valid, 1 otherwise. Contact sheets (views x frames
thumbnails per orbit) go to DIR (default: <shard folder>/../contact_sheets).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shards.contact_sheet import write_contact_sheet
from shards.index import index_tar, read_entry
from shards.render_schema import SchemaError, decode_render_sample

log = logging.getLogger("shards.inspect")


def inspect_shard(path: Path, out_dir: Path | None, thumb: int = 96) -> tuple[int, list[str]]:
    """Returns (valid sample count, error messages); writes contact sheets when out_dir is given.

    Every problem is reported: each bad sample by its key, and a damaged or incomplete shard (no
    end-of-archive marker, fewer samples than its manifest) by its file."""
    valid, errors = 0, []
    index = index_tar(path)
    errors.extend(f"{path.name}:{key}: {why}" for key, why in index.rejected)
    for entry in index.entries:
        try:
            sample = decode_render_sample(read_entry(entry))
        except SchemaError as exc:
            errors.append(f"{path.name}:{entry.key}: {exc}")
            continue
        valid += 1
        line = (
            f"  {sample.key}: {', '.join(sample.orbits)}; {sample.meta['num_views']} views x "
            f"{sample.meta['num_frames']} frames at {sample.meta['resolution']}px"
        )
        if out_dir is not None:
            line += f" -> {write_contact_sheet(sample, out_dir, thumb)}"
        print(line)
    if index.error:
        errors.append(index.error)
    return valid, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="render shard .tar files")
    parser.add_argument("--out", type=Path, default=None, help="contact sheet folder")
    parser.add_argument("--thumb", type=int, default=96, help="thumbnail size in pixels (default 96)")
    parser.add_argument("--no-sheets", action="store_true", help="validate only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = False
    for path in args.paths:
        if not path.is_file():
            print(f"{path}: no such shard", file=sys.stderr)
            failed = True
            continue
        out = None if args.no_sheets else (args.out or path.parent.parent / "contact_sheets")
        print(f"{path}:")
        valid, errors = inspect_shard(path, out, args.thumb)
        for err in errors:
            print(f"  INVALID {err}", file=sys.stderr)
        print(f"  {valid} valid, {len(errors)} invalid")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
