"""Issue 13, training side: safe checkpoint loading, stale runs, bad latent samples, logs after a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_train_state
from model.data import DataError, IndexedLatentDataset, SkipRecord
from model.train import main, run_stage
from profiles.schema import StageConfig, TrainConfig
from shards.latent_schema import encode_latent_sample
from shards.render_schema import npy_bytes
from shards.synthetic import synthetic_latent_sample, write_latent_shards
from shards.writer import ShardWriter
from tests.model.test_train import make_cfg, train_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def write_shard(path: Path, samples: list[tuple[str, dict]]) -> str:
    """A latent shard of synthetic samples; each (key, {field: array}) replaces fields after encoding, so
    the shard can hold what the writer's own check would refuse (NaN, wrong dtypes)."""
    with ShardWriter(path) as w:
        for i, (key, edits) in enumerate(samples):
            raw = encode_latent_sample(synthetic_latent_sample(key, seed=i))
            raw.update({name: npy_bytes(arr) for name, arr in edits.items()})
            w.write(raw)
    return str(path)


def nan_mean() -> np.ndarray:
    arr = synthetic_latent_sample("x").mean["dynamic"].copy()
    arr[1, 2, 0, 3, 3] = np.nan
    return arr


# ---------------------------------------------------------------------------------------------------------
# item 1: no code from a checkpoint


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_crafted_train_state_runs_no_code(tmp_path, shard_glob, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "out/checkpoints/4d/step_0000004"
    ckpt.mkdir(parents=True)
    torch.save({"stage": "4d", "step": 4, "x": _Payload(marker)}, ckpt / "train_state.pt")
    (ckpt.parent / "latest").write_text("step_0000004\n")
    with pytest.raises(CheckpointError, match=r"step_0000004/train_state.pt: refused to load"):
        load_train_state(ckpt)
    assert not marker.exists()
    # --resume reads it twice (the "stage complete" check, then the resume): neither runs the payload
    argv = ["--stage", "4d", "--resume"]
    for s in train_overrides(tmp_path / "out", shard_glob):
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train_state.pt: refused to load" in err[0]
    assert not marker.exists()


def test_the_trainers_own_state_still_loads_safely(tmp_path, shard_glob):
    res = run_stage(make_cfg(tmp_path, shard_glob, steps=1), "4d")
    state = load_train_state(res.checkpoint)
    assert state["step"] == 1 and state["rng"][0]["numpy"][1].dtype == np.uint32


# ---------------------------------------------------------------------------------------------------------
# item 2: a stale run


def test_a_fresh_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path, shard_glob):
    cfg = make_cfg(tmp_path, shard_glob, steps=4, **{"train.ckpt_every": 2, "train.keep_checkpoints": 1})
    run_stage(cfg, "4d")
    stage_dir = tmp_path / "checkpoints/4d"
    with pytest.raises(FileExistsError, match=r"holds checkpoints of another run \(up to step_0000004\)"):
        run_stage(cfg, "4d", steps=2)
    again = run_stage(cfg, "4d", steps=2, overwrite=True)
    # before: step_0000004 of the old run outranked it, the new checkpoint was pruned as it was written
    assert [p.name for p in list_checkpoints(stage_dir)] == ["step_0000002"]
    assert latest_checkpoint(stage_dir) == again.checkpoint == stage_dir / "step_0000002"
    resumed = run_stage(cfg, "4d", steps=2, resume=True)
    assert (resumed.start_step, resumed.final_step) == (2, 2)


# ---------------------------------------------------------------------------------------------------------
# items 3 and 10: bad latent samples


def _ds(urls, tmp_path, frac=0.5):
    train = TrainConfig(max_bad_sample_fraction=frac)
    stage = StageConfig(name="4d", num_views=2, num_frames=2)
    return IndexedLatentDataset(urls, train, stage, skips=SkipRecord(tmp_path / "skipped.jsonl"))


def _record(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_samples_are_checked_up_front_from_headers(tmp_path):
    bad_dtype = synthetic_latent_sample("x").std["static"].astype(np.float32)
    url = write_shard(
        tmp_path / "shard-000000.tar",
        [("a", {}), ("b", {"static.latent_std.npy": bad_dtype}), ("c", {}), ("d", {})],
    )
    ds = _ds([url], tmp_path)
    assert [e.key for e in ds.entries] == ["a", "c", "d"]
    assert _record(tmp_path / "skipped.jsonl") == [
        {"shard": url, "key": "b", "reason": "static.latent_std.npy: dtype float32, expected float16"}
    ]
    with pytest.raises(DataError, match=r"1 of 4 latent samples are bad \(train.max_bad_sample_fraction=0.2"):
        _ds([url], tmp_path, frac=0.2)


def test_an_unreadable_or_cut_shard_names_the_file(tmp_path):
    good = write_shard(tmp_path / "shard-000000.tar", [("a", {}), ("b", {})])
    (tmp_path / "shard-000001.tar").write_bytes(b"this is not a tar" * 100)
    with pytest.raises(DataError, match=r"shard-000001.tar: .*unreadable tar"):
        _ds([good, str(tmp_path / "shard-000001.tar")], tmp_path)
    data = Path(good).read_bytes()
    cut = data.index(b"b.dynamic.")  # the header of b's first member: a cut at the sample boundary
    (tmp_path / "shard-000002.tar").write_bytes(data[:cut])
    with pytest.raises(DataError, match=r"shard-000002.tar: incomplete tar"):
        _ds([str(tmp_path / "shard-000002.tar")], tmp_path)


def test_shards_of_different_resolutions_are_refused(tmp_path):
    a = write_latent_shards(tmp_path / "a", num_shards=1, per_shard=1)
    b = write_latent_shards(tmp_path / "b", num_shards=1, per_shard=1, h=4)
    with pytest.raises(
        DataError, match=r"different sizes: .*a/shard-000000.tar:obj000 has latents \(4, 8, 8\)"
    ):
        _ds(a + b, tmp_path)


def test_a_nan_sample_mid_shard_is_skipped_recorded_and_resumed_past(tmp_path):
    url = write_shard(
        tmp_path / "data" / "shard-000000.tar",
        [("a", {}), ("b", {"dynamic.latent_mean.npy": nan_mean()}), ("c", {})],
    )
    extra = {"train.max_bad_sample_fraction": 0.5, "train.ckpt_every": 2, "train.keep_checkpoints": 0}
    full = run_stage(make_cfg(tmp_path / "full", url, steps=4, **extra), "4d")
    assert full.final_step == 4 and np.all(np.isfinite(full.losses)) and full.bad_steps == 0
    record = tmp_path / "full/logs/train_4d/skipped_samples.jsonl"
    assert [(r["shard"], r["key"]) for r in _record(record)] == [(url, "b")]
    assert "dynamic.latent_mean.npy: contains NaN" in _record(record)[0]["reason"]
    # a killed run resumes past it, bit for bit, and lists it once
    split = make_cfg(tmp_path / "split", url, steps=4, **extra)
    first = run_stage(split, "4d", steps=2)
    second = run_stage(split, "4d", resume=True)
    assert first.losses + second.losses == full.losses
    assert len(_record(tmp_path / "split/logs/train_4d/skipped_samples.jsonl")) == 1
    # too many bad samples: the stage stops, naming the record
    strict = make_cfg(tmp_path / "strict", url, steps=4, **{"train.max_bad_sample_fraction": 0.2})
    with pytest.raises(DataError, match=r"1 of 3 latent samples are bad .*skipped_samples.jsonl"):
        run_stage(strict, "4d")


# ---------------------------------------------------------------------------------------------------------
# item 14: logs after a resume; item 9: one-line config errors


def test_replayed_steps_are_logged_once(tmp_path, shard_glob):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = {"train.ckpt_every": 2, "train.keep_checkpoints": 0}
    cfg = make_cfg(tmp_path, shard_glob, steps=4, **extra)
    run_stage(cfg, "4d")
    # a kill after step 4 was logged but before its checkpoint: the resume replays steps 3 and 4
    stage_dir = tmp_path / "checkpoints/4d"
    shutil.rmtree(stage_dir / "step_0000004")
    (stage_dir / "latest").write_text("step_0000002\n")
    resumed = run_stage(cfg, "4d", resume=True)
    assert resumed.start_step == 2
    logs = tmp_path / "logs/train_4d"
    rows = [json.loads(x) for x in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows[2:]] == pytest.approx(resumed.losses)
    acc = EventAccumulator(str(logs))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert [e.value for e in events[2:]] == pytest.approx(resumed.losses)


def test_config_errors_are_one_line(capsys):
    for bad, match in (
        ("train.batch_sise=2", "batch_sise"),
        ("train.max_bad_sample_fraction=1.5", "max_bad_sample_fraction must lie in [0, 1)"),
    ):
        assert main(["--set", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("train: error:") and match in err[0], err
