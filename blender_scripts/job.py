"""The per-asset job file (JOB.json) of `render_asset` and `analyze_asset`, and their exit protocol.

No bpy here: the orchestrator can build and validate jobs with `RenderJob.from_dict(...).to_dict()`.

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXIT_OK, EXIT_CRASH, EXIT_BAD_JOB, EXIT_BAD_ASSET = 0, 1, 2, 3
#: The orchestrator puts its pid here so that the script can die with it (`exit_with_parent`).
PARENT_PID_ENV = "SV4D2_PARENT_PID"


@dataclass
class OrbitSpec:
    num_views: int = 6
    static_elevation_deg: float = 10.0
    dynamic_elevation_range_deg: tuple[float, float] = (-5.0, 30.0)
    dynamic_azimuth_jitter: float = 0.5
    radius: float = 2.0
    fov_deg: float = 33.8


@dataclass
class RenderJob:
    """One asset's render (or analysis) job; field meanings in render_asset's docstring."""

    uid: str
    asset_path: str
    out_dir: str
    mode: str = "4d"
    resolution: int = 96
    num_frames: int = 6
    clip_duration_s: float = 0.0
    orbits: list[str] = field(default_factory=lambda: ["static", "dynamic"])
    orbit: OrbitSpec = field(default_factory=OrbitSpec)
    samples: int = 8
    denoiser: str = "none"
    device: str = "CPU"
    threads: int = 1
    adaptive_threshold: float = 0.0
    max_bounces: int = 4
    seed: int = 1234
    environment: dict = field(default_factory=lambda: {"kind": "sky", "strength": 1.0})
    global_offsets: list[list[float]] | None = None
    static_frame: float | None = None
    max_points: int = 20000
    crop_border: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderJob:
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("uid", "asset_path", "out_dir") if k not in d]
        if missing:
            raise ValueError(f"job is missing required keys {missing}")
        unknown = sorted(set(d) - known)
        if unknown:
            log.warning("ignoring unknown job keys %s", unknown)
        kwargs = {k: v for k, v in d.items() if k in known}
        orbit = dict(kwargs.pop("orbit", None) or {})
        orbit_known = {f.name for f in fields(OrbitSpec)}
        bad = sorted(set(orbit) - orbit_known)
        if bad:
            raise ValueError(f"unknown orbit keys {bad}; known: {sorted(orbit_known)}")
        if "dynamic_elevation_range_deg" in orbit:
            orbit["dynamic_elevation_range_deg"] = tuple(orbit["dynamic_elevation_range_deg"])
        job = cls(orbit=OrbitSpec(**orbit), **kwargs)
        job.validate()
        return job

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        check(self.mode in ("4d", "static"), f"mode must be '4d' or 'static', got {self.mode!r}")
        check(int(self.resolution) >= 8, f"resolution must be at least 8, got {self.resolution}")
        check(int(self.num_frames) >= 1, f"num_frames must be at least 1, got {self.num_frames}")
        check(float(self.clip_duration_s) >= 0, f"clip_duration_s must be >= 0, got {self.clip_duration_s}")
        check(
            bool(self.orbits)
            and set(self.orbits) <= {"static", "dynamic"}
            and len(set(self.orbits)) == len(self.orbits),
            f"orbits must be distinct names among 'static', 'dynamic', got {self.orbits}",
        )
        check(
            int(self.orbit.num_views) >= 1, f"orbit.num_views must be at least 1, got {self.orbit.num_views}"
        )
        check(float(self.orbit.radius) > 0, f"orbit.radius must be positive, got {self.orbit.radius}")
        check(int(self.samples) >= 1, f"samples must be at least 1, got {self.samples}")
        check(
            self.denoiser in ("none", "OIDN", "OPTIX"),
            f"denoiser must be none/OIDN/OPTIX, got {self.denoiser!r}",
        )
        check(
            self.device in ("CPU", "CUDA", "OPTIX", "auto"),
            f"device must be CPU/CUDA/OPTIX/auto, got {self.device!r}",
        )
        check(int(self.threads) >= 0, f"threads must be >= 0, got {self.threads}")
        check(int(self.max_bounces) >= 0, f"max_bounces must be >= 0, got {self.max_bounces}")
        check(
            float(self.adaptive_threshold) >= 0,
            f"adaptive_threshold must be >= 0, got {self.adaptive_threshold}",
        )
        check(int(self.max_points) >= 1, f"max_points must be at least 1, got {self.max_points}")
        kind = self.environment.get("kind")
        check(kind in ("sky", "hdri"), f"environment.kind must be 'sky' or 'hdri', got {kind!r}")
        if kind == "hdri":
            check(bool(self.environment.get("path")), "environment kind 'hdri' needs a 'path'")
        if self.global_offsets is not None:
            frames = 1 if self.mode == "static" else int(self.num_frames)
            ok = len(self.global_offsets) == frames and all(len(g) == 3 for g in self.global_offsets)
            check(
                ok,
                f"global_offsets must be {frames} triples (one per frame), got {self.global_offsets}",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["orbit"]["dynamic_elevation_range_deg"] = list(self.orbit.dynamic_elevation_range_deg)
        return d

    @property
    def rendered_frames(self) -> int:
        return 1 if self.mode == "static" else int(self.num_frames)


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
