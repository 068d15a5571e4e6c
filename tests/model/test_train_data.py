"""Training examples from latent shards: views, frames, relative cameras, latent statistics, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import (
    IndexedLatentDataset,
    StepSampler,
    build_example,
    collate,
    draw_frames,
    draw_views,
    expand_urls,
    make_loader,
    relative_cameras,
)
from profiles.schema import StageConfig, TrainConfig
from shards.index import index_shards, read_entry
from shards.latent_schema import decode_latent_sample
from shards.synthetic import synthetic_latent_sample, write_latent_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_latent_shards(tmp_path_factory.mktemp("latents"))


def test_views_and_frames_are_distinct_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        inp, views = draw_views(24, 4, rng)
        allv = [inp, *views.tolist()]
        assert len(set(allv)) == 5 and all(0 <= v < 24 for v in allv)
        frames = draw_frames(24, 12, 2, rng)
        assert len(frames) == 12 and frames[0] >= 0 and frames[-1] < 24
        steps = np.diff(frames)
        assert np.all(steps == steps[0]) and steps[0] in (1, 2)
    strides = {int(np.diff(draw_frames(24, 12, 2, rng))[0]) for _ in range(100)}
    assert strides == {1, 2}
    assert draw_frames(12, 12, 3, rng).tolist() == list(range(12))  # stride clamped so the window fits
    with pytest.raises(ValueError, match="target views"):
        draw_views(4, 4, rng)
    with pytest.raises(ValueError, match="num_frames 7"):
        draw_frames(6, 7, 1, rng)


def test_relative_cameras_put_the_input_view_at_polar_90_azimuth_0():
    angles = np.array([[10.0, 30.0, 2], [25.0, 90.0, 2], [-5.0, 10.0, 2]], np.float32)
    polar, azim = relative_cameras(angles, input_view=0, targets=np.array([0, 1, 2]))
    assert polar[0] == pytest.approx(math.pi / 2) and azim[0] == pytest.approx(0.0, abs=1e-6)
    # 15 deg higher -> polar 75 deg; azimuth +60 deg; -20 deg relative azimuth wraps to 340 deg.
    assert math.degrees(polar[1]) == pytest.approx(75.0, abs=1e-4)
    assert math.degrees(azim[1]) == pytest.approx(60.0, abs=1e-4)
    assert math.degrees(polar[2]) == pytest.approx(105.0, abs=1e-4)
    assert math.degrees(azim[2]) == pytest.approx(340.0, abs=1e-4)


def test_example_contents_follow_the_input_view_and_window():
    sample = synthetic_latent_sample("s", views=6, frames=6)
    stage = StageConfig(num_views=3, num_frames=4, orbits=["dynamic"])
    ex = build_example(sample, TrainConfig(), stage, np.random.default_rng(3))
    inp, views, frames = int(ex["input_view"]), ex["views"], ex["frames"]
    assert ex["orbit"] == "dynamic"
    assert ex["latents"].shape == (4, 3, 4, 8, 8)  # (F, V, C, h, w)
    mean = sample.mean["dynamic"].astype(np.float32)
    np.testing.assert_array_equal(ex["cond_latents"], mean[inp, frames])  # unscaled input-view means
    np.testing.assert_array_equal(ex["clip"], sample.clip["dynamic"][inp, frames].astype(np.float32))
    np.testing.assert_array_equal(ex["ref_latents"], mean[views, frames[0]])
    # Targets are scaled draws around the means of the target views at the window's frames.
    resid = ex["latents"] / 0.18215 - mean[views][:, frames].transpose(1, 0, 2, 3, 4)
    std = sample.std["dynamic"].astype(np.float32)[views][:, frames].transpose(1, 0, 2, 3, 4)
    assert np.all(np.abs(resid) <= 6 * std + 1e-2)
    assert ex["polar"].shape == (3,) and np.all(ex["azimuth"] >= 0) and np.all(ex["azimuth"] < 2 * math.pi)


def test_sampled_latents_have_the_stored_mean_and_std():
    sample = synthetic_latent_sample("s", views=6, frames=6)
    sample.std["static"][:] = np.float16(0.5)
    stage = StageConfig(num_views=5, num_frames=6, orbits=["static"])
    draws = [build_example(sample, TrainConfig(), stage, np.random.default_rng(i)) for i in range(300)]
    # Fix one (view, frame) cell: view order is sorted and all 5 non-input views are drawn, so collect
    # the draws whose target set is views 1..5 and look at view 1, frame 0.
    cells = [d["latents"][0, 0] / 0.18215 for d in draws if d["views"].tolist() == [1, 2, 3, 4, 5]]
    assert len(cells) > 20
    z = np.stack(cells)
    m = sample.mean["static"][1, 0].astype(np.float32)
    assert np.abs(z.mean(0) - m).mean() < 0.5 * 0.5 / math.sqrt(len(cells)) * 3
    assert z.std(0).mean() == pytest.approx(0.5, rel=0.15)


def test_index_reads_back_the_same_samples(shards):
    entries = index_shards(shards)
    assert [e.key for e in entries] == ["obj000", "obj001", "obj002", "obj003"]
    got = decode_latent_sample(read_entry(entries[2]))
    want = synthetic_latent_sample("obj002", seed=2)
    np.testing.assert_array_equal(got.mean["dynamic"], want.mean["dynamic"])
    assert expand_urls(["shard-*.tar"], Path(shards[0]).parent) == shards
    assert expand_urls(["shard-{000000..000001}.tar"], Path(shards[0]).parent) == shards
    with pytest.raises(FileNotFoundError, match="no latent shards"):
        expand_urls(["nothing-*.tar"], Path(shards[0]).parent)


def test_examples_are_a_function_of_seed_and_index(shards):
    spec = (TrainConfig(cond_drop_prob=0.5), StageConfig(num_views=2, num_frames=3, ref_mask_prob=0.5))
    a = IndexedLatentDataset(shards, *spec, seed=7)
    b = IndexedLatentDataset(shards, *spec, seed=7)
    for g in (0, 5, 123456789012):
        ea, eb = a[g], b[g]
        for k in ("latents", "noise", "sigma", "cond_noise", "cond_aug", "polar"):
            assert torch.equal(ea[k], eb[k])
    assert not torch.equal(a[0]["noise"], a[1]["noise"])
    c = IndexedLatentDataset(shards, *spec, seed=8)
    assert not torch.equal(a[0]["noise"], c[0]["noise"])
    # Over many examples every object is drawn (resampling with replacement) and the rates are right.
    ex = [a[g] for g in range(200)]
    assert {e["key"] for e in ex} == {"obj000", "obj001", "obj002", "obj003"}
    assert 0.35 < np.mean([bool(e["drop_cond"]) for e in ex]) < 0.65
    assert 0.35 < np.mean([bool(e["ref_drop"]) for e in ex]) < 0.65


def test_rank_slices_of_a_step_tile_the_global_batch(shards):
    one = iter(StepSampler(batch_size=4, rank=0, world_size=1, start=3))
    r0 = iter(StepSampler(batch_size=2, rank=0, world_size=2, start=3))
    r1 = iter(StepSampler(batch_size=2, rank=1, world_size=2, start=3))
    assert [next(one) for _ in range(4)] == [next(r0) for _ in range(2)] + [next(r1) for _ in range(2)]
    spec = (TrainConfig(), StageConfig(num_views=2, num_frames=2))
    loader = make_loader(shards, *spec, seed=1, batch_size=2, start_micro_step=5)
    batch = next(iter(loader))
    assert batch["index"].tolist() == [10, 11]
    ds = IndexedLatentDataset(shards, *spec, seed=1)
    assert torch.equal(batch["latents"], collate([ds[10], ds[11]])["latents"])
    assert batch["latents"].shape == (2, 2, 2, 4, 8, 8)


def test_streaming_pipeline_yields_valid_examples(shards):
    from model.data import streaming_dataset

    spec = (TrainConfig(), StageConfig(num_views=2, num_frames=3))
    it = iter(streaming_dataset(shards, *spec, seed=0, shuffle_buffer=4))
    ex = [next(it) for _ in range(12)]
    assert all(e["latents"].shape == (3, 2, 4, 8, 8) for e in ex)
    assert len({e["key"] for e in ex}) >= 2  # resampled shards + shuffle mix the objects
    again = iter(streaming_dataset(shards, *spec, seed=0, shuffle_buffer=4))
    assert [next(again)["key"] for _ in range(12)] == [e["key"] for e in ex]  # seeded stream
