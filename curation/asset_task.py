"""Everything that happens to one asset, as a plain function (Ray runs it; tests call it directly).

fetch -> [clip choice] -> analysis pass (Blender) -> motion disentanglement and filters -> lighting choice
-> render pass (Blender) -> per-image alpha checks -> `done.json`, the asset's manifest row(s). A finished
asset folder is reused on a re-run, so a killed job resumes where it stopped; a folder made with other
render or curation settings (`settings.json` holds their fingerprint) is emptied and redone instead.

With `render.clip.select: all` every action of the file is its own sample: uid `<uid>-<action>`, rendered
in `<asset folder>/clips/<action>/`, and done.json lists the rows (`{"rows": [...]}`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

from blender_scripts.job import RenderJob
from curation.blender_job import run_blender_script
from curation.pack import RESULT_FILE, expected_images
from profiles import to_dict
from profiles.schema import PipelineConfig, RenderConfig

log = logging.getLogger(__name__)

DONE_FILE = "done.json"
ANALYSIS_FILE = "analysis.json"
SETTINGS_FILE = "settings.json"
IMAGE_STATS_FILE = "image_stats.json"
CLIPS_DIR = "clips"

#: RenderConfig fields that change no pixel and no decision: left out of the settings fingerprint.
NOT_FINGERPRINTED = (
    "timeout_s",
    "timeout_per_image_s",
    "timeout_growth",
    "retries",
    "cpus_per_task",
    "gpus_per_task",
    "keep_work_images",
    "threads",
)


def asset_seed(uid: str, seed: int) -> int:
    """A stable per-asset seed (Python's hash() is salted per process)."""
    return (zlib.crc32(uid.encode()) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


#: Failures that another attempt may not repeat (the network, the machine, a timeout): a re-run of the
#: shard tries these assets again, while decisions about the asset itself (bad file, filtered) stand.
#: A timeout is retried only when the budget has grown since (`timeout_s` of the row).
TRANSIENT_REASONS = frozenset({"fetch_error", "timeout", "crash", "worker_error", "missing_outputs"})


def settings_fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    """{"fingerprint": sha256 hex, "settings": ...} of everything that shapes an asset's images and rows."""
    render = {k: v for k, v in to_dict(cfg.render).items() if k not in NOT_FINGERPRINTED}
    curation = to_dict(cfg.curation)
    curation["hdri"].pop("library_dir")  # where the maps live (moves with --out); the map chosen is recorded
    settings = {"render": render, "curation": curation, "seed": cfg.assets.seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, "settings": settings}


def stored_fingerprint(asset_dir: Path) -> str | None:
    try:
        return json.loads((Path(asset_dir) / SETTINGS_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def prepare_asset_dir(asset_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """Make `asset_dir` hold only outputs of these settings; True when it was emptied for them.

    A folder without settings.json but with files comes from an older version: emptied as well.
    """
    asset_dir = Path(asset_dir)
    asset_dir.mkdir(parents=True, exist_ok=True)
    stored = stored_fingerprint(asset_dir)
    reset = stored != fingerprint["fingerprint"] and (stored is not None or any(asset_dir.iterdir()))
    if reset:
        log.info("%s: render settings changed, re-rendering", asset_dir.name)
        shutil.rmtree(asset_dir)
        asset_dir.mkdir(parents=True)
    if reset or stored is None:
        tmp = asset_dir / (SETTINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        tmp.replace(asset_dir / SETTINGS_FILE)
    return reset


def job_timeout(render: RenderConfig, images: int) -> float:
    """Budget of one Blender process: timeout_s + timeout_per_image_s x its image count."""
    return float(render.timeout_s + render.timeout_per_image_s * images)


def _is_retryable(row: dict[str, Any], cfg: PipelineConfig | None) -> bool:
    if row.get("status") != "failed" or row.get("reason") not in TRANSIENT_REASONS:
        return False
    if row.get("reason") == "timeout" and cfg is not None and row.get("timeout_s") is not None:
        # the same budget would time out again: retried only once the budget has grown
        images = int(row.get("num_images") or 0)
        return job_timeout(cfg.render, images) > float(row["timeout_s"]) * (1 + 1e-9)
    return True


def read_done_rows(
    asset_dir: Path, fingerprint: str | None = None, cfg: PipelineConfig | None = None
) -> list[dict[str, Any]] | None:
    """The asset's finished manifest rows, or None when it must (still) be processed.

    None also when `fingerprint` is given and the folder was made with other settings, or when a row is
    a transient failure worth another attempt.
    """
    from shards.manifest import RENDER_COLUMNS as COLUMNS

    path = Path(asset_dir) / DONE_FILE
    if not path.is_file():
        return None
    if fingerprint is not None and stored_fingerprint(asset_dir) != fingerprint:
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    rows = data["rows"] if isinstance(data, dict) and "rows" in data else [data]
    out = []
    for row in rows:
        if _is_retryable(row, cfg):
            return None
        unknown = set(row) - set(COLUMNS)
        if unknown:  # written by another version of this code: keep what the manifest knows
            log.warning("%s: ignoring unknown fields %s", path, sorted(unknown))
            row = {k: v for k, v in row.items() if k in COLUMNS}
        out.append(row)
    return out


def read_done(asset_dir: Path, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The asset's single finished row (the first of several), or None (see `read_done_rows`)."""
    rows = read_done_rows(asset_dir, fingerprint)
    return rows[0] if rows else None


def _write_done(asset_dir: Path, payload: Any) -> None:
    tmp = Path(asset_dir) / (DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(Path(asset_dir) / DONE_FILE)


def _finish(asset_dir: Path, row: dict[str, Any], start: float) -> dict[str, Any]:
    row["total_s"] = time.monotonic() - start
    _write_done(asset_dir, row)
    return row


def base_job(cfg: PipelineConfig, uid: str, asset_path: Path, out_dir: Path) -> dict[str, Any]:
    """The job file of both passes: cfg.render itself plus the per-asset fields."""
    job = RenderJob(
        uid=uid,
        asset_path=str(asset_path),
        out_dir=str(out_dir),
        render=cfg.render,
        seed=asset_seed(uid, cfg.assets.seed),
        environment={"kind": "sky", "strength": cfg.render.sky_strength},
        max_points=cfg.curation.motion.max_points,
    )
    return job.to_dict()


def _node_id() -> str | None:
    """The Ray node that ran the task (which machine of a cluster rendered what)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


def clip_slug(action: str, taken: set[str]) -> str:
    """A sample-key-safe suffix for an action name, unique among `taken` (which it joins)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", action).strip("_") or "action"
    base, i = slug, 1
    while slug in taken:
        i += 1
        slug = f"{base}_{i}"
    taken.add(slug)
    return slug


def clip_dir(work: Path, record_uid: str, row_uid: str) -> Path:
    """Where the row `row_uid` of asset `record_uid` was rendered (see the module docstring)."""
    if row_uid == record_uid:
        return Path(work) / record_uid
    return Path(work) / record_uid / CLIPS_DIR / row_uid[len(record_uid) + 1 :]


def _run(module: str, job: dict, out: Path, result: str, cfg: PipelineConfig, images: int, expected):
    r = cfg.render
    return run_blender_script(
        module,
        job,
        out,
        result,
        job_timeout(r, images),
        r.retries,
        expected_files=expected,
        timeout_growth=r.timeout_growth,
    )


def _failed(row: dict[str, Any], outcome: Any) -> dict[str, Any]:
    row.update(status="failed", reason=outcome.reason, detail=outcome.detail)
    if outcome.reason == "timeout":
        row["timeout_s"] = outcome.timeout_s
    return row


def _actions_column(actions: list[dict[str, Any]] | None) -> str | None:
    if not actions:
        return None
    return json.dumps([{"name": a["name"], "frame_range": a["frame_range"]} for a in actions])


def choose_clip(
    cfg: PipelineConfig, job: dict[str, Any], asset_dir: Path, row: dict[str, Any]
) -> tuple[str | None, float | None, list[dict[str, Any]] | None, Any]:
    """(action, clip_start, actions, failed outcome or None) for the `render.clip` setting.

    most_motion measures every action in a Blender pass first (analyze_asset with measure_actions); the
    others leave the choice to the analysis pass (action by name, or the longest).
    """
    sel = cfg.render.clip
    if sel.select == "action":
        return sel.action, None, None, None
    if sel.select != "most_motion" or cfg.render.mode != "4d":
        return None, None, None, None
    from curation.clip_choice import most_motion_clip

    measure = dict(job, measure_actions=True)
    outcome = _run(
        "blender_scripts.analyze_asset",
        measure,
        asset_dir,
        ANALYSIS_FILE,  # overwritten by the clip's own analysis pass
        cfg,
        0,
        lambda _res: [asset_dir / "actions.npz"],
    )
    row["attempts"] += outcome.attempts
    if not outcome.ok:
        return None, None, None, outcome
    choice = most_motion_clip(asset_dir / "actions.npz", outcome.result, cfg)
    return choice["action"], choice["clip_start"], outcome.result.get("actions"), None


def render_clip(
    record: Any,
    cfg: PipelineConfig,
    path: Path,
    out: Path,
    row: dict[str, Any],
    action: str | None,
    clip_start: float | None,
) -> dict[str, Any]:
    """Analysis, curation, render and image checks of one clip into `out`; returns its row (done.json)."""
    from curation import analysis
    from curation.filters import decide_images
    from curation.image_checks import image_stats

    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    job = base_job(cfg, row["uid"], path, out)
    job["action"], job["clip_start"] = action, clip_start

    # Cheap analysis pass first, so that filtered assets cost no render time.
    outcome = _run(
        "blender_scripts.analyze_asset",
        job,
        out,
        ANALYSIS_FILE,
        cfg,
        0,
        lambda _res: [out / "analysis.npz"],
    )
    row["attempts"] += outcome.attempts
    row["analysis_s"] = outcome.seconds
    res = outcome.result
    row["num_vertices"] = res.get("num_vertices")
    row["num_faces"] = res.get("num_faces")
    frames = res.get("frames") or {}
    row["action"] = frames.get("action")
    row["actions"] = row.get("actions") or _actions_column(frames.get("actions"))
    row["orphan_skeleton"] = res.get("orphan_skeleton")
    if outcome.reason in analysis.FILTER_REASONS_FROM_ANALYSIS:
        row.update(status="filtered", reason=outcome.reason, detail=outcome.detail)
        return _finish(out, row, start)
    if not outcome.ok:
        return _finish(out, _failed(row, outcome), start)
    try:
        decision = analysis.curate(out, res, record, cfg)
    except Exception as exc:  # degenerate geometry etc.: this asset's failure, recorded
        row.update(status="failed", reason="analysis_error", detail=f"{type(exc).__name__}: {exc}")
        return _finish(out, row, start)
    row.update({k: v for k, v in decision.values.items() if k != "license"})
    (out / "curation.json").write_text(json.dumps(decision.__dict__, indent=1, default=str))
    if decision.status != "accept":
        row.update(status="filtered", reason=decision.reason, detail=decision.detail)
        return _finish(out, row, start)

    job["global_offsets"] = decision.global_offsets
    job["environment"] = decision.environment
    row["hdri"] = decision.environment.get("path") and Path(decision.environment["path"]).name
    row["hdri_rotation_deg"] = decision.environment.get("rotation_deg")
    images = RenderJob.from_dict(job).num_images
    outcome = _run(
        "blender_scripts.render_asset",
        job,
        out,
        RESULT_FILE,
        cfg,
        images,
        lambda res: expected_images(out, res),
    )
    row["attempts"] += outcome.attempts
    row["render_s"] = outcome.seconds
    row["num_images"] = images
    if not outcome.ok:
        return _finish(out, _failed(row, outcome), start)
    timings = outcome.result.get("timings", {})
    stats = image_stats(out, outcome.result)
    (out / IMAGE_STATS_FILE).write_text(json.dumps(stats, indent=1))
    row.update({k: stats[k] for k in ("border_images", "transparent_images", "min_coverage", "max_coverage")})
    row.update(num_images=timings.get("images"), s_per_image=timings.get("s_per_image"))
    verdict = decide_images(stats, cfg.curation.filters)
    if verdict is not None:
        row.update(status="filtered", reason=verdict[0], detail=verdict[1])
        return _finish(out, row, start)
    row.update(status="rendered", reason=None, detail="")
    return _finish(out, row, start)


def process_asset(record: Any, cfg: PipelineConfig, asset_dir: Path) -> list[dict[str, Any]]:
    """Run one asset to its manifest rows (one, or one per action); never raises for a bad asset."""
    from curation import sources  # imported here: heavy, and only the workers need them

    asset_dir = Path(asset_dir)
    fingerprint = settings_fingerprint(cfg)
    prepare_asset_dir(asset_dir, fingerprint)
    done = read_done_rows(asset_dir, fingerprint["fingerprint"], cfg)
    if done is not None:
        return done
    start = time.monotonic()
    row: dict[str, Any] = {
        "uid": record.uid,
        "source": record.source,
        "license": record.license,
        "expected": getattr(record, "expected", None),
        "attempts": 0,
        "node_id": _node_id(),
    }
    from curation.filters import license_decision

    lic = license_decision(record, cfg.curation.filters, cfg.assets.licenses)
    if not lic.accepted:  # decided from the listing alone: never download what cannot be used
        row.update(status="filtered", reason=lic.reason, detail=lic.detail)
        return [_finish(asset_dir, row, start)]
    try:
        path = Path(sources.fetch_asset(record, cfg.assets)).resolve()
    except Exception as exc:  # any fetch problem is this asset's failure, never the job's
        row.update(status="failed", reason="fetch_error", detail=f"{type(exc).__name__}: {exc}")
        return [_finish(asset_dir, row, start)]

    if cfg.render.clip.select != "all" or cfg.render.mode != "4d":
        job = base_job(cfg, record.uid, path, asset_dir)
        action, clip_start, actions, failed = choose_clip(cfg, job, asset_dir, row)
        if failed is not None:
            return [_finish(asset_dir, _failed(row, failed), start)]
        row["actions"] = _actions_column(actions)
        row["clip_start"] = clip_start
        return [render_clip(record, cfg, path, asset_dir, row, action, clip_start)]

    # every action its own sample: list them with an analysis pass
    listing = asset_dir / CLIPS_DIR / "_listing"
    job = base_job(cfg, record.uid, path, listing)
    outcome = _run(
        "blender_scripts.analyze_asset",
        job,
        listing,
        ANALYSIS_FILE,
        cfg,
        0,
        lambda _res: [listing / "analysis.npz"],
    )
    actions = (outcome.result.get("frames") or {}).get("actions") or []
    if not outcome.ok or len(actions) <= 1:  # bad, still or single-action assets: one row as usual
        return [render_clip(record, cfg, path, asset_dir, row, None, None)]
    rows, taken = [], set()
    for a in actions:
        uid = f"{record.uid}-{clip_slug(a['name'], taken)}"
        out = clip_dir(asset_dir.parent, record.uid, uid)
        previous = read_done_rows(out, None, cfg)
        if previous is not None:
            rows.extend(previous)
            continue
        clip_row = dict(row, uid=uid, attempts=outcome.attempts, actions=_actions_column(actions))
        rows.append(render_clip(record, cfg, path, out, clip_row, a["name"], None))
    for r in rows:
        r.setdefault("total_s", time.monotonic() - start)
    _write_done(asset_dir, {"rows": rows})
    return rows
