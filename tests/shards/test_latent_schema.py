import json

import numpy as np
import pytest

from shards.latent_schema import (
    LatentSample,
    decode_latent_sample,
    draw_posterior_latents,
    encode_latent_sample,
)
from shards.reader import iter_raw_samples
from shards.render_schema import SchemaError, npy_bytes
from shards.writer import ShardWriter
from tests.synthetic import make_render_sample

ENCODER = {
    "vae": "tiny-random",
    "vae_scaling_factor": 0.18215,
    "latent_channels": 4,
    "downsample": 8,
    "clip_model": "tiny",
    "clip_dim": 6,
    "background": [1.0, 1.0, 1.0],
}


def make_latent_sample(key: str = "a0", views: int = 2, frames: int = 3, res: int = 16, seed: int = 0):
    render = make_render_sample(key, views=views, frames=frames, res=res, seed=seed)
    rng = np.random.default_rng(seed)
    h = res // 8
    shape = (views, frames, 4, h, h)
    return LatentSample(
        key=key,
        mean={o: rng.normal(size=shape).astype(np.float16) for o in render.orbits},
        std={o: rng.uniform(0, 0.1, size=shape).astype(np.float16) for o in render.orbits},
        clip={o: rng.normal(size=(views, frames, 6)).astype(np.float16) for o in render.orbits},
        c2w=render.c2w,
        angles=render.angles,
        intrinsics=render.intrinsics,
        meta=dict(render.meta, encoder=ENCODER),
    )


def test_write_then_read_round_trip_is_exact(tmp_path):
    samples = [make_latent_sample(f"k{i}", seed=i) for i in range(3)]
    with ShardWriter(tmp_path / "latents.tar") as writer:
        for s in samples:
            writer.write(encode_latent_sample(s))
    got = [decode_latent_sample(raw) for raw in iter_raw_samples(tmp_path / "latents.tar")]
    assert [g.key for g in got] == ["k0", "k1", "k2"]
    for want, have in zip(samples, got):
        assert have.orbits == ["static", "dynamic"]
        for o in have.orbits:
            for a, b in ((want.mean, have.mean), (want.std, have.std), (want.clip, have.clip)):
                assert b[o].dtype == np.float16
                np.testing.assert_array_equal(a[o], b[o])
            np.testing.assert_array_equal(want.c2w[o], have.c2w[o])
            np.testing.assert_array_equal(want.angles[o], have.angles[o])
        assert have.mean["static"].shape == (2, 3, 4, 2, 2)
        assert have.clip["dynamic"].shape == (2, 3, 6)
        assert have.scaling_factor == pytest.approx(0.18215)
        assert have.meta["latent_schema_version"] == 1


def _raw(**changes):
    raw = encode_latent_sample(make_latent_sample())
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    "field, array, message",
    [
        ("static.latent_mean.npy", np.zeros((2, 3, 4, 2, 2), np.float32), "dtype float32"),
        ("dynamic.latent_std.npy", np.zeros((2, 3, 3, 2, 2), np.float16), "shape (2, 3, 3, 2, 2)"),
        ("static.clip.npy", np.zeros((2, 3, 7), np.float16), "expected (2, 3, 6)"),
        ("dynamic.c2w.npy", np.zeros((2, 4, 4), np.float64), "dtype float64"),
        ("static.latent_std.npy", -np.ones((2, 3, 4, 2, 2), np.float16), "negative"),
        ("static.latent_mean.npy", np.full((2, 3, 4, 2, 2), np.nan, np.float16), "NaN"),
    ],
)
def test_bad_arrays_are_rejected_naming_the_field(field, array, message):
    with pytest.raises(SchemaError) as err:
        decode_latent_sample(_raw(**{field: npy_bytes(array)}))
    assert field in str(err.value) and message in str(err.value)


def test_missing_extra_fields_and_encoder_meta_are_rejected():
    raw = _raw()
    del raw["static.clip.npy"]
    with pytest.raises(SchemaError, match="missing fields: \\['static.clip.npy'\\]"):
        decode_latent_sample(raw)
    with pytest.raises(SchemaError, match="unexpected fields: \\['static.v00.f00.png'\\]"):
        decode_latent_sample(_raw(**{"static.v00.f00.png": b"x"}))
    meta = json.loads(_raw()["meta.json"])
    del meta["encoder"]["vae_scaling_factor"]
    with pytest.raises(SchemaError, match="encoder is missing keys \\['vae_scaling_factor'\\]"):
        decode_latent_sample(_raw(**{"meta.json": json.dumps(meta).encode()}))
    with pytest.raises(SchemaError, match="__key__"):
        decode_latent_sample(_raw(__key__="a.b"))


def test_encode_refuses_wrong_shapes():
    s = make_latent_sample()
    s.mean["static"] = s.mean["static"][:, :2]
    with pytest.raises(SchemaError, match="static.latent_mean.npy: shape"):
        encode_latent_sample(s)


def test_sample_latents_scales_and_draws_around_the_mean():
    mean = np.full((2000, 4), 2.0, np.float16)
    std = np.full((2000, 4), 0.5, np.float16)
    z = draw_posterior_latents(mean, std, 0.18215, np.random.default_rng(0))
    assert z.dtype == np.float32 and z.shape == mean.shape
    assert z.mean() == pytest.approx(2.0 * 0.18215, abs=3e-3)
    assert z.std() == pytest.approx(0.5 * 0.18215, rel=0.03)
    exact = draw_posterior_latents(mean, np.zeros_like(std), 0.18215, np.random.default_rng(1))
    np.testing.assert_array_equal(exact, np.float32(2.0) * np.float32(0.18215))
