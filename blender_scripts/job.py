"""The per-asset job file (JOB.json) of `render_asset` and `analyze_asset`, and their exit protocol.

No bpy here: the orchestrator builds jobs from `cfg.render` (`RenderJob(..., render=cfg.render).to_dict()`)
and the scripts read them back with the same validation as a profile.

Exit codes of both scripts:
    0  success, result written with status "ok"
    1  crash (an unexpected exception; result written with status "failed", reason "crash" when possible)
    2  bad job file or arguments (reason "bad_job")
    3  bad asset: a recorded failure with a reason code (see scene_io.AssetError), not to be retried
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.schema import RenderConfig

log = logging.getLogger(__name__)

EXIT_OK, EXIT_CRASH, EXIT_BAD_JOB, EXIT_BAD_ASSET = 0, 1, 2, 3
#: The orchestrator puts its pid here so that the script can die with it (`exit_with_parent`).
PARENT_PID_ENV = "SV4D2_PARENT_PID"


@dataclass
class RenderJob:
    """One asset's render (or analysis) job: the profile's `render` section plus what is per asset.

    The render settings are `cfg.render` itself (serialized with `profiles.to_dict`, read back with the same
    validation), so no default is restated here. Per asset: the paths, the seed, the lighting and the
    global-motion offsets chosen by curation, and the clip to render.
    """

    uid: str
    asset_path: str
    out_dir: str
    render: RenderConfig = field(default_factory=RenderConfig)
    seed: int = 1234
    """Cycles seed and the dynamic orbit's seed."""
    environment: dict = field(default_factory=lambda: {"kind": "sky", "strength": 1.0})
    global_offsets: list[list[float]] | None = None
    """F triples: world offsets subtracted per rendered frame before normalization."""
    static_frame: float | None = None
    """static mode on an animated asset poses it at this source frame."""
    max_points: int = 20000
    action: str | None = None
    """Render this action (every object that has it in its NLA stack plays it); None: the longest."""
    clip_start: float | None = None
    """First source frame of the clip (a most_motion window); None: the action's start."""
    measure_actions: bool = False
    """analysis only: sample every action's motion (for render.clip.select most_motion)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderJob:
        from profiles.loader import from_dict

        missing = [k for k in ("uid", "asset_path", "out_dir") if k not in d]
        if missing:
            raise ValueError(f"job is missing required keys {missing}")
        return from_dict(cls, d, "job")

    def validate(self) -> None:
        kind = self.environment.get("kind")
        if kind not in ("sky", "hdri"):
            raise ValueError(f"environment.kind must be 'sky' or 'hdri', got {kind!r}")
        if kind == "hdri" and not self.environment.get("path"):
            raise ValueError("environment kind 'hdri' needs a 'path'")
        if self.max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {self.max_points}")
        if self.global_offsets is not None:
            frames = self.rendered_frames
            ok = len(self.global_offsets) == frames and all(len(g) == 3 for g in self.global_offsets)
            if not ok:
                raise ValueError(
                    f"global_offsets must be {frames} triples (one per frame), got {self.global_offsets}"
                )

    def to_dict(self) -> dict[str, Any]:
        from profiles.loader import to_dict

        return to_dict(self)

    @property
    def rendered_frames(self) -> int:
        return 1 if self.render.mode == "static" else int(self.render.num_frames)

    @property
    def num_images(self) -> int:
        """Images of the render pass: views x orbits x frames."""
        return self.render.orbit.num_views * len(self.render.orbits) * self.rendered_frames


def load_job(path: str | os.PathLike) -> RenderJob:
    with open(path) as f:
        return RenderJob.from_dict(json.load(f))


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON via a temporary file and a rename, so a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def exit_with_parent() -> None:
    """Get SIGKILLed when the process that started us dies (Linux prctl PR_SET_PDEATHSIG).

    The orchestrator starts each script in its own session (so that a timeout kills the whole group), which
    also means that a killed Ray worker would leave Blender rendering on into a folder that the resumed run
    renders into again. The parent's pid comes in $SV4D2_PARENT_PID; without it (a manual run) nothing
    changes.
    """
    want = os.environ.get(PARENT_PID_ENV)
    if not want or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(want):  # the parent died before the request took effect
        os._exit(EXIT_CRASH)


def failure(reason: str, detail: str, uid: str | None = None) -> dict:
    return {"status": "failed", "uid": uid, "reason": reason, "detail": detail}


def run_cli(argv: list[str] | None, description: str, result_name: str, work: Any) -> int:
    """Shared CLI protocol of the per-asset scripts: parse `--job`, run `work(job) -> dict`, write the result.

    The result file `out_dir/result_name` is removed at the start and written last (atomically): it exists
    only when the run has finished, one way or another. Returns the exit code (module docstring).
    """
    import argparse
    import traceback

    from blender_scripts.scene_io import AssetError

    exit_with_parent()

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--job", required=True, help="path of the JOB.json file describing the asset and settings"
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    try:
        job = load_job(args.job)
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        log.error("bad job file %s: %s", args.job, exc)
        return EXIT_BAD_JOB
    out_dir = Path(job.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / result_name
    result_path.unlink(missing_ok=True)
    try:
        result = work(job)
        code = EXIT_OK
    except AssetError as exc:
        log.warning("asset %s failed: %s", job.uid, exc)
        result = failure(exc.reason, exc.detail, job.uid)
        result.update(getattr(exc, "extra", {}))
        code = EXIT_BAD_ASSET
    except Exception as exc:  # a crash: recorded, and the orchestrator may retry
        log.error("asset %s crashed:\n%s", job.uid, traceback.format_exc())
        result = failure("crash", f"{type(exc).__name__}: {exc}"[:2000], job.uid)
        code = EXIT_CRASH
    write_json_atomic(result_path, result)
    sys.stdout.flush()
    sys.stderr.flush()
    return code
