"""Run one `blender_scripts` entry point in a fresh Python+bpy process, with a timeout and retries.

One process per asset and per pass keeps bpy's memory growth and crashes contained. The contract of the
scripts: they read a job JSON, write their outputs and then a JSON result file last; exit code 3 means
"bad asset" (a recorded failure, not retried), 0 means success, anything else is a crash (retried).
A run counts as done only when its result file says ok AND every expected output exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blender_scripts.job import PARENT_PID_ENV

log = logging.getLogger(__name__)

BAD_ASSET_EXIT = 3


@dataclass
class JobOutcome:
    """status: ok | failed. reason: a short code (timeout, crash, no_mesh, ...); detail: human text."""

    status: str
    reason: str | None = None
    detail: str = ""
    attempts: int = 0
    seconds: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 0.0
    """The budget of the last attempt."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def output_ok(path: Path) -> bool:
    """An output exists and is not empty, and a PNG decodes (a full disk leaves zero-byte or cut PNGs)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
    except Exception:  # PIL raises several types for a cut or corrupt file
        return False
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_blender_script(
    module: str,
    job: dict[str, Any],
    work_dir: Path,
    result_name: str,
    timeout_s: float,
    retries: int = 0,
    expected_files: Callable[[dict[str, Any]], list[Path]] | None = None,
    env: dict[str, str] | None = None,
    timeout_growth: float = 2.0,
) -> JobOutcome:
    """Run `python -m <module> --job <work_dir>/<module>.job.json` until it succeeds or attempts run out.

    Logs go to `<work_dir>/<short module name>.log` (appended per attempt); the result JSON is read from
    `<work_dir>/<result_name>`. A crash is retried at the same budget; a timeout is retried with the budget
    times `timeout_growth`, and not at all when that is 1 (a deterministic timeout would only repeat).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    short = module.rsplit(".", 1)[-1]
    job_path = work_dir / f"{short}.job.json"
    job_path.write_text(json.dumps(job, indent=1))
    log_path = work_dir / f"{short}.log"
    result_path = work_dir / result_name
    start = time.monotonic()
    outcome = JobOutcome(status="failed", reason="not_run")
    child_env = dict(os.environ, **(env or {}))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    child_env[PARENT_PID_ENV] = str(os.getpid())  # the script dies with us (job.exit_with_parent)
    # Blender leaves a blender_* folder in the temp directory per process: give it one we remove
    tmp_dir = work_dir / "tmp"
    child_env["TMPDIR"] = str(tmp_dir)
    budget = float(timeout_s)
    for attempt in range(1, retries + 2):
        result_path.unlink(missing_ok=True)
        tmp_dir.mkdir(exist_ok=True)
        with open(log_path, "a") as logf:
            logf.write(f"\n===== attempt {attempt}: {module} =====\n")
            logf.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--job", str(job_path)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env,
                start_new_session=True,  # so a timeout kills Blender and anything it spawned
            )
            try:
                rc = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                detail = f"{module} exceeded {budget:.0f} s"
                outcome = JobOutcome("failed", "timeout", detail, attempt, timeout_s=budget)
                if timeout_growth <= 1.0:
                    break
                budget *= timeout_growth
                continue
        result: dict[str, Any] = {}
        if result_path.is_file():
            try:
                result = json.loads(result_path.read_text())
            except json.JSONDecodeError as exc:
                result = {"status": "failed", "reason": "bad_result", "detail": str(exc)}
        if rc == BAD_ASSET_EXIT:
            reason = result.get("reason") or "bad_asset"
            outcome = JobOutcome("failed", reason, result.get("detail", ""), attempt, result=result)
            break  # the asset is bad; another attempt would fail the same way
        if rc != 0 or result.get("status") != "ok":
            detail = f"exit code {rc}; log tail:\n{_tail(log_path)}"
            outcome = JobOutcome("failed", "crash", detail, attempt, result=result)
            continue
        missing = [str(p) for p in (expected_files(result) if expected_files else []) if not output_ok(p)]
        if missing:
            detail = f"{len(missing)} expected outputs missing or unreadable, e.g. {missing[0]}"
            outcome = JobOutcome("failed", "missing_outputs", detail, attempt, result=result)
            continue
        outcome = JobOutcome("ok", None, "", attempt, result=result)
        break
    shutil.rmtree(tmp_dir, ignore_errors=True)
    outcome.seconds = time.monotonic() - start
    outcome.timeout_s = outcome.timeout_s or budget
    return outcome
