"""Batch novel-view sampling as Ray tasks: one output folder and one manifest row per input.

Inputs: every video, image-folder or render shard in a folder, or every sample of a render shard
(``shard.tar#KEY``). Pending inputs are cut into groups of `inputs_per_task`; each group is one Ray task
holding `sample.gpus_per_task` GPUs (1 by default), which loads the network once and samples its inputs in
turn (`run_inputs`). An input whose ``summary.json`` exists is skipped (resumable: a killed batch resumes
where it stopped); one that fails (unreadable file, empty mask, ...) becomes a `failed` row with its reason,
never the failure of the batch. `<out>/manifest.parquet` is rewritten atomically after every task.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
COLUMNS = ("key", "input", "status", "reason", "out_dir", "seconds")


def list_inputs(path: str | Path) -> list[str]:
    """The inputs of a batch: `path` a render shard (one per sample) or a folder (one per entry)."""
    from model.video_input import IMAGE_EXTS, VIDEO_EXTS

    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".tar":
        from shards.reader import list_keys

        return [f"{path}#{k}" for k in list_keys(path)]
    if not path.is_dir():
        raise ValueError(f"batch input {path} is neither a folder nor a .tar shard")
    out = []
    for p in sorted(path.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.suffix.lower() in (*VIDEO_EXTS, ".gif", ".tar", *IMAGE_EXTS):
            out.append(str(p))
    if not out:
        raise ValueError(f"{path}: no inputs (videos, .gif, frame folders, images, .tar shards)")
    return out


def run_inputs(cfg: Any, inputs: list[str], out_root: str | Path, force: bool = False) -> list[dict]:
    """Sample each input into <out_root>/<key>; one row per input (the body of a Ray task)."""
    from model.novel_views import DONE_FILE, NovelViewSampler, input_key

    out_root = Path(out_root)
    rows: list[dict] = []
    sampler = None
    for spec in inputs:
        key = input_key(spec)
        out_dir = out_root / key
        row = {"key": key, "input": spec, "status": "", "reason": "", "out_dir": str(out_dir), "seconds": 0.0}
        if (out_dir / DONE_FILE).is_file() and not force:
            rows.append(row | {"status": "skipped", "reason": f"{DONE_FILE} exists"})
            continue
        t0 = time.perf_counter()
        try:
            if sampler is None:
                sampler = NovelViewSampler(cfg)
            sampler.run(spec, out_dir)
            row["status"] = "done"
        except Exception as exc:  # one bad input is a recorded failure, never the end of the batch
            log.warning("input %s failed: %s", spec, exc)
            log.debug("%s", traceback.format_exc())
            row |= {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    return rows


def write_manifest(path: str | Path, rows: list[dict]) -> Path:
    """Rows -> parquet (written to a temporary name, then renamed)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from shards.writer import atomic_write_bytes

    table = pa.table({c: [r.get(c) for r in rows] for c in COLUMNS})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_manifest(path: str | Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


def run_batch(
    cfg: Any,
    inputs: str | Path,
    out_root: str | Path,
    address: str | None = None,
    inputs_per_task: int = 4,
    force: bool = False,
) -> list[dict]:
    """Run every input of `inputs` as Ray tasks; returns (and writes) the manifest rows, in input order."""
    import ray
    from tqdm import tqdm

    from profiles.load import absolute_paths

    if inputs_per_task < 1:
        raise ValueError(f"inputs_per_task must be at least 1, got {inputs_per_task}")
    cfg = absolute_paths(cfg)
    # workers run elsewhere: file knobs of the sample section become absolute (a stage name stays a name)
    for name in ("checkpoint", "init_images", "masks"):
        value = getattr(cfg.sample, name)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            setattr(cfg.sample, name, str(Path(value).expanduser().resolve()))
    if isinstance(cfg.sample.cameras, str) and Path(cfg.sample.cameras).expanduser().is_file():
        cfg.sample.cameras = str(Path(cfg.sample.cameras).expanduser().resolve())
    out_root = Path(out_root).expanduser().resolve()
    specs = list_inputs(inputs)
    specs = [s if "#" in s else str(Path(s).resolve()) for s in specs]
    groups = [specs[i : i + inputs_per_task] for i in range(0, len(specs), inputs_per_task)]
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    task = ray.remote(num_gpus=cfg.sample.gpus_per_task, num_cpus=cfg.sample.cpus_per_task, max_retries=0)(
        run_inputs
    )
    pending = {task.remote(cfg, g, out_root, force): g for g in groups}
    by_input: dict[str, dict] = {}
    with tqdm(total=len(specs), desc="inputs", unit="input", disable=not cfg.sample.progress) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            group = pending.pop(ref)
            try:
                rows = ray.get(ref)
            except Exception as exc:  # the task itself died (out of memory, killed node)
                from model.novel_views import input_key

                reason = f"task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                rows = [
                    {
                        "key": input_key(s),
                        "input": s,
                        "status": "failed",
                        "reason": reason,
                        "out_dir": str(out_root / input_key(s)),
                        "seconds": 0.0,
                    }
                    for s in group
                ]
            for r in rows:
                by_input[r["input"]] = r
            bar.update(len(rows))
            write_manifest(out_root / MANIFEST, [by_input[s] for s in specs if s in by_input])
    return [by_input[s] for s in specs]
