"""The render job runner and shard bookkeeping, without Blender (a fake job script stands in)."""

import time

import pytest

from curation.blender_job import run_blender_script
from curation.render import shard_slice
from shards.manifest import read_manifest, write_manifest


def _run(tmp_path, behaviour, retries=2, timeout=20.0):
    return run_blender_script(
        "tests.curation.fake_job",
        {"out_dir": str(tmp_path), "behaviour": behaviour},
        tmp_path,
        "result.json",
        timeout_s=timeout,
        retries=retries,
        expected_files=lambda res: [tmp_path / "image.png"],
    )


def test_success_first_time(tmp_path):
    out = _run(tmp_path, ["ok"])
    assert out.ok and out.attempts == 1 and out.result["value"] == 1
    assert "attempt 1" in (tmp_path / "fake_job.log").read_text()


def test_crash_is_retried_then_succeeds(tmp_path):
    out = _run(tmp_path, ["crash", "ok"])
    assert out.ok and out.attempts == 2


def test_bad_asset_is_not_retried(tmp_path):
    out = _run(tmp_path, ["bad", "ok"])
    assert not out.ok and out.reason == "no_mesh" and out.attempts == 1


def test_retries_are_bounded(tmp_path):
    out = _run(tmp_path, ["crash"], retries=1)
    assert not out.ok and out.reason == "crash" and out.attempts == 2
    assert "exit code" in out.detail


def test_timeout_kills_and_records(tmp_path):
    start = time.monotonic()
    out = _run(tmp_path, ["hang"], retries=0, timeout=2.0)
    assert not out.ok and out.reason == "timeout"
    assert time.monotonic() - start < 15


def test_ok_without_outputs_is_not_done(tmp_path):
    out = _run(tmp_path, ["no_outputs"], retries=0)
    assert not out.ok and out.reason == "missing_outputs"


def test_shard_slices_are_deterministic_and_disjoint():
    items = list(range(10))
    assert shard_slice(items, 0, 4) == [0, 1, 2, 3]
    assert shard_slice(items, 2, 4) == [8, 9]
    with pytest.raises(ValueError, match="3 shard"):
        shard_slice(items, 3, 4)


def test_manifest_round_trip_and_unknown_column(tmp_path):
    rows = [
        {"uid": "a", "source": "local", "status": "rendered", "num_images": 12, "motion": 0.1},
        {"uid": "b", "source": "local", "status": "failed", "reason": "no_mesh", "detail": "x"},
    ]
    write_manifest(tmp_path / "m.parquet", rows)
    got = read_manifest(tmp_path / "m.parquet")
    assert got[0]["num_images"] == 12 and got[1]["reason"] == "no_mesh" and got[1]["motion"] is None
    with pytest.raises(ValueError, match="bogus"):
        write_manifest(tmp_path / "m.parquet", [{"uid": "c", "status": "failed", "bogus": 1}])


def test_render_shard_ships_absolute_paths_to_workers(tmp_path, monkeypatch):
    """Ray workers on a cluster run in another cwd: the driver must hand them absolute paths."""
    from curation import hdri, render, sources
    from profiles import load_profile

    monkeypatch.chdir(tmp_path)
    cfg = load_profile("demo", ["out_dir=rel/out", "curation.hdri.library_dir=rel/hdri"])
    record = sources.AssetRecord(uid="a", source="local", path=str(tmp_path / "a.glb"), license="cc0")
    monkeypatch.setattr(sources, "list_assets", lambda _cfg: [record])
    monkeypatch.setattr(hdri, "prepare_library", lambda *a, **k: [])
    monkeypatch.setattr(render, "_init_ray", lambda *a: None)
    seen = {}

    def fake_run_tasks(records, cfg, work):
        seen.update(cfg=cfg, work=work)
        return [[{"uid": "a", "source": "local", "status": "failed", "reason": "crash"}]]

    monkeypatch.setattr(render, "run_tasks", fake_run_tasks)
    summary = render.render_shard(cfg, 0)
    assert seen["work"] == tmp_path / "rel" / "out" / "work" / "shard-000000"
    assert seen["cfg"].curation.hdri.library_dir == str(tmp_path / "rel" / "hdri")
    assert summary["manifest"] == str(tmp_path / "rel" / "out" / "manifests" / "shard-000000.parquet")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_worker_takes_its_blender_process_along(tmp_path):
    """A killed Ray worker must not leave its Blender process rendering into the asset folder (it runs in
    its own session, so nothing else would stop it before the resumed run starts another one there)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; from pathlib import Path; from curation.blender_job import run_blender_script; "
        "run_blender_script('tests.curation.fake_job', {'out_dir': sys.argv[1], 'behaviour': ['hang']}, "
        "Path(sys.argv[1]), 'result.json', timeout_s=60)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root)
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid.txt").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "pid.txt").read_text())
    assert _alive(child)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not _alive(child), "the job process outlived its worker"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_force_redoes_the_assets_of_a_complete_shard(tmp_path, monkeypatch):
    from curation import hdri, render, sources
    from curation.asset_task import prepare_asset_dir, read_done, settings_fingerprint
    from profiles import load_profile

    cfg = load_profile("demo", [f"out_dir={tmp_path}"])
    record = sources.AssetRecord(uid="a", source="local", path=str(tmp_path / "a.glb"), license="cc0")
    monkeypatch.setattr(sources, "list_assets", lambda _cfg: [record])
    monkeypatch.setattr(hdri, "prepare_library", lambda *a, **k: [])
    monkeypatch.setattr(render, "_init_ray", lambda *a: None)
    paths = render.shard_paths(tmp_path, 0)
    row = {"uid": "a", "source": "local", "status": "failed", "reason": "crash"}
    prepare_asset_dir(paths["work"] / "a", settings_fingerprint(cfg))
    (paths["work"] / "a" / "done.json").write_text('{"uid": "a", "status": "failed", "reason": "old"}')
    seen = []

    def fake_run_tasks(records, cfg, work):
        seen.append(read_done(work / "a"))
        assert not paths["manifest"].exists()  # a killed forced run must not look complete
        return [[dict(row)]]

    monkeypatch.setattr(render, "run_tasks", fake_run_tasks)
    paths["tar"].parent.mkdir(parents=True)
    paths["tar"].write_bytes(b"")
    write_manifest(paths["manifest"], [row])
    assert render.render_shard(cfg, 0)["skipped"] and not seen
    render.render_shard(cfg, 0, force=True)
    assert seen == [None], "--force reused a finished asset"


def test_rerun_retries_transient_failures_but_keeps_decisions(tmp_path):
    import json

    from curation.asset_task import read_done

    def done(name, row):
        d = tmp_path / name
        d.mkdir()
        (d / "done.json").write_text(json.dumps({"uid": name, "source": "local", **row}))
        return d

    assert read_done(done("t", {"status": "failed", "reason": "timeout"})) is None
    assert read_done(done("f", {"status": "failed", "reason": "fetch_error"})) is None
    assert read_done(done("b", {"status": "failed", "reason": "no_mesh"}))["reason"] == "no_mesh"
    assert read_done(done("s", {"status": "filtered", "reason": "small_motion"}))["status"] == "filtered"
    old = read_done(done("o", {"status": "rendered", "from_an_old_version": 1}))
    assert old["status"] == "rendered" and "from_an_old_version" not in old
