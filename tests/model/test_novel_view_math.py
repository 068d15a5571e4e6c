"""Novel-view sampling math: the sampler on Gaussian data, start-from-image, guidance, windows, view groups,
cameras and frame selection (no model, no I/O)."""

import json
import math

import numpy as np
import pytest
import torch

from model.edm import cfg_scale_ramp, euler_edm_sample, karras_sigmas, noise_to_step
from model.novel_cameras import from_pairs, load_cameras, preset, resolve_cameras
from model.novel_views import sample_views
from model.windows import fill_frames, select_frames, view_groups, window_schedule

MU, STD = 0.6, 0.5


def gaussian_denoiser(mu: float = MU, std: float = STD):
    """Ideal denoiser of N(mu, std^2) data: E[x0 | x0 + s n = x] = mu + std^2 (x - mu) / (std^2 + s^2)."""

    def d(x, sigma, conditional):
        s2 = sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2
        return mu + std**2 * (x - mu) / (std**2 + s2)

    return d


SHAPE = (4000, 1, 2, 1, 1, 1)


def euler_std(start_std: float, sigmas: torch.Tensor) -> float:
    """Closed-form std of the Euler sampler's output on Gaussian data (ideal denoiser): each step maps
    x - mu to (x - mu) * (1 + s (s_next - s) / (std^2 + s^2))."""
    out = start_std
    for s, s_next in zip(sigmas[:-1].double().tolist(), sigmas[1:].double().tolist()):
        out *= 1.0 + s * (s_next - s) / (STD**2 + s**2)
    return out


def test_sampler_reproduces_gaussian_data_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    # guided (both branches the same denoiser, so guidance must not change the answer) and unguided
    for lo, hi in ((1.0, 1.0), (1.0, 2.0)):
        for n in (50, 400):
            sig = karras_sigmas(n)
            x = euler_edm_sample(gaussian_denoiser(), SHAPE, num_steps=n, cfg_lo=lo, cfg_hi=hi, generator=g)
            assert x.mean().item() == pytest.approx(MU, abs=0.03)
            # Euler's own known answer (first order: 50 steps shrink the std by ~8%) ...
            assert x.std().item() == pytest.approx(euler_std(math.sqrt(1 + 700.0**2), sig), rel=0.03)
    # ... which converges to the data's std as the steps grow (the probability-flow ODE's exact answer)
    assert x.std().item() == pytest.approx(STD, rel=0.03)
    assert euler_std(math.sqrt(1 + 700.0**2), karras_sigmas(400)) == pytest.approx(STD, rel=0.02)


def test_start_from_image_matches_the_trajectory_state_at_step_k():
    k, n = 25, 50
    sig = karras_sigmas(n)
    sigma_k = float(sig[k])
    states = {}

    def spy(x, sigma, conditional):
        if math.isclose(float(sigma[0]), sigma_k, rel_tol=1e-6) and conditional:
            states["x"] = x.clone()
        return gaussian_denoiser()(x, sigma, conditional)

    g = torch.Generator().manual_seed(1)
    full = euler_edm_sample(spy, SHAPE, num_steps=n, cfg_lo=1, cfg_hi=1, generator=g)
    x0 = MU + STD * torch.randn(SHAPE, generator=g)  # "images" from the data distribution
    x_k = noise_to_step(x0, k, n, generator=g)
    traj = states["x"]
    # same noise level: the trajectory's state is N(mu, std_k^2) with std_k = Euler's image of the start std,
    # the noised images N(mu, std^2 + sigma_k^2); the two agree to Euler's error at step k (< 1% here)
    traj_std = euler_std(math.sqrt(1 + 700.0**2), sig[: k + 1])
    img_std = math.sqrt(STD**2 + sigma_k**2)
    assert traj_std == pytest.approx(img_std, rel=0.01)
    for t, want in ((traj, traj_std), (x_k, img_std)):
        assert t.mean().item() == pytest.approx(MU, abs=0.05 * want)
        assert t.std().item() == pytest.approx(want, rel=0.03)
    resumed = euler_edm_sample(
        gaussian_denoiser(), SHAPE, num_steps=n, cfg_lo=1, cfg_hi=1, x_init=x_k, start_step=k
    )
    assert full.std().item() == pytest.approx(euler_std(math.sqrt(1 + 700.0**2), sig), rel=0.03)
    assert resumed.std().item() == pytest.approx(euler_std(img_std, sig[k:]), rel=0.03)
    assert resumed.mean().item() == pytest.approx(MU, abs=0.03)
    # resuming the trajectory's own state at step k gives back the trajectory exactly
    again = euler_edm_sample(
        gaussian_denoiser(), SHAPE, num_steps=n, cfg_lo=1, cfg_hi=1, x_init=traj, start_step=k
    )
    torch.testing.assert_close(again, full)


def test_start_from_image_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="start_step"):
        noise_to_step(torch.zeros(1), 50, 50)
    with pytest.raises(ValueError, match="x_init"):
        euler_edm_sample(gaussian_denoiser(), (1, 1, 1, 1, 1, 1), num_steps=5, start_step=2)
    with pytest.raises(ValueError, match="shape"):
        euler_edm_sample(
            gaussian_denoiser(), (1, 1, 1, 1, 1, 1), num_steps=5, x_init=torch.zeros(2), start_step=2
        )


def test_guidance_rises_along_views_and_time():
    # conditional 1, unconditional 0: the sample is the guidance scale of each (frame, view) latent
    x = euler_edm_sample(
        lambda x, s, c: torch.full_like(x, 1.0 if c else 0.0),
        (1, 12, 4, 1, 1, 1),
        num_steps=3,
        cfg_lo=1,
        cfg_hi=2,
    )
    s = x[0, :, :, 0, 0, 0]
    assert s[0, 0].item() == pytest.approx(1.0) and s[-1, -1].item() == pytest.approx(2.0)
    assert (s[:, 1:] > s[:, :-1]).all() and (s[1:] > s[:-1]).all()
    torch.testing.assert_close(s, cfg_scale_ramp(12, 4))


@pytest.mark.parametrize("t", [1, 2, 5, 12])
def test_windows_cover_every_frame_once_and_condition_on_generated_frames(t):
    for n in range(t, 4 * t + 3):
        wins = window_schedule(n, t)
        written = [f for w in wins for f in w.writes]
        assert sorted(written) == list(range(n)), (n, t)
        assert wins[0].ref_frame is None and wins[0].frames == tuple(range(t))
        done: set[int] = set()
        for w in wins:
            assert len(w.frames) == t and w.frames[0] >= 0 and w.frames[-1] < n
            assert set(w.writes) <= set(w.frames)
            if w.ref_frame is not None:
                assert w.ref_frame in done  # its reference views exist already
                assert w.ref_frame == w.start or t == 1
            done |= set(w.writes)
        assert wins[-1].frames[-1] == n - 1


def test_windows_match_the_release_for_its_default_length():
    wins = window_schedule(21, 12)
    assert [(w.frames[0], w.frames[-1], w.ref_frame) for w in wins] == [(0, 11, None), (9, 20, 9)]
    assert wins[1].writes == tuple(range(12, 21))
    with pytest.raises(ValueError, match="fewer than one window"):
        window_schedule(5, 12)


def test_view_groups_chain_through_anchor_views():
    g = view_groups(8, 4, anchors=1)
    assert [x.slots for x in g] == [(0, 1, 2, 3), (0, 4, 5, 6), (4, 7)]
    assert [x.outputs for x in g] == [(0, 1, 2, 3), (4, 5, 6), (7,)]
    for n in range(1, 20):
        for v in (1, 2, 4, 8):
            if n > v and v == 1:
                with pytest.raises(ValueError, match="anchors"):
                    view_groups(n, v, 1)
                continue
            groups = view_groups(n, v, min(2, max(v - 1, 1)))
            outs = [i for x in groups for i in x.outputs]
            assert sorted(outs) == list(range(n))
            assert all(len(x.slots) <= v for x in groups)
            for prev, cur in zip(groups, groups[1:]):
                assert set(cur.slots[: cur.anchors]) <= set(prev.slots)


def fake_sampler(calls):
    """Latent of (frame f, view with azimuth a) = 1000 * (1 + frame id) + 10 * azimuth; records its inputs."""

    def run(cond, clip, polar, azimuth, ref, x_init):
        calls.append(
            {"frames": cond[0, :, 0, 0, 0].tolist(), "az": azimuth[0].tolist(), "ref": ref, "x": x_init}
        )
        fid = cond[0, :, 0, 0, 0]  # the test's cond latents carry their frame index
        lat = 1000 * (1 + fid)[:, None] + 10 * azimuth[0][None, :]
        return lat[None, :, :, None, None, None].expand(1, -1, -1, 2, 3, 3).clone()

    return run


def test_sample_views_conditions_later_windows_and_groups_on_the_right_latents():
    n, nv, scale = 9, 6, 0.5
    cond = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 2, 3, 3).clone()
    clip = torch.zeros(n, 7)
    az = torch.arange(1, nv + 1, dtype=torch.float32)
    calls = []
    out = sample_views(
        fake_sampler(calls),
        cond,
        clip,
        torch.zeros(nv),
        az,
        frames_per_pass=4,
        views_per_pass=4,
        anchors=1,
        scale=scale,
    )
    expected = 1000 * (1 + torch.arange(n))[:, None] + 10 * az[None]
    torch.testing.assert_close(out[:, :, 0, 0, 0], expected.float())
    wins = window_schedule(n, 4)
    assert len(calls) == len(wins) * 2
    # first window, first group: no reference views
    assert calls[0]["ref"] is None and calls[0]["az"] == [1, 2, 3, 4]
    # first window, second group: the anchor view (az 1) carries its frame-0 latent, the new views zeros
    c = calls[1]
    assert c["az"] == [1, 5, 6] and c["frames"] == [0, 1, 2, 3]
    ref = c["ref"][0, :, 0, 0, 0]
    torch.testing.assert_close(ref, torch.tensor([(1000 + 10) / scale, 0.0, 0.0]))
    # later windows: every view's generated latent at the window's first frame, unscaled
    for w, k in zip(wins[1:], range(1, len(wins))):
        for g in range(2):
            c = calls[2 * k + g]
            assert c["frames"][0] == w.ref_frame
            want = (1000 * (1 + w.ref_frame) + 10 * torch.tensor(c["az"])) / scale
            torch.testing.assert_close(c["ref"][0, :, 0, 0, 0], want)


def test_sample_views_start_from_image_noises_the_given_latents():
    n, nv = 4, 4
    cond = torch.zeros(n, 2, 3, 3)
    init = torch.randn(n, nv, 2, 3, 3)
    seen = []

    def sampler(cond, clip, polar, azimuth, ref, x_init):
        seen.append(x_init)
        return x_init

    out = sample_views(
        sampler,
        cond,
        torch.zeros(n, 5),
        torch.zeros(nv),
        torch.arange(nv).float(),
        frames_per_pass=4,
        views_per_pass=4,
        init_latents=init,
        start_step=3,
        noise_fn=lambda x: x + 1.0,
    )
    assert seen[0].shape == (1, 4, 4, 2, 3, 3)
    torch.testing.assert_close(out, init + 1.0)


def test_camera_presets_files_and_network_angles(tmp_path):
    c = preset("sv4d2")
    assert c.azimuth_deg == (60, 120, 180, 240) and c.elevation_deg == (0, 0, 0, 0)
    o = preset("orbit", 5, 10.0)
    assert len(o) == 5 and o.elevation_deg == (10.0,) * 5 and o.azimuth_deg[0] == pytest.approx(60.0)
    polar, az = preset("sv4d2").network_angles()
    torch.testing.assert_close(polar, torch.full((4,), math.pi / 2))
    torch.testing.assert_close(az, torch.deg2rad(torch.tensor([60.0, 120.0, 180.0, 240.0])))
    # a camera looking down from 30 degrees while the input is at 0: polar 60 degrees
    p, _ = from_pairs([[30, 90]]).network_angles()
    assert p.item() == pytest.approx(math.radians(60))
    (tmp_path / "c.json").write_text(json.dumps([[10, 45], {"elevation": -5, "azimuth": 300}]))
    (tmp_path / "c.yaml").write_text("views:\n  - [10, 45]\n  - {elevation: -5, azimuth: 300}\n")
    for f in ("c.json", "c.yaml"):
        cs = load_cameras(tmp_path / f)
        assert cs.elevation_deg == (10.0, -5.0) and cs.azimuth_deg == (45.0, 300.0)
    assert resolve_cameras("[[0, 90]]", 4, 0).azimuth_deg == (90.0,)
    c2w, angles = preset("sv4d2").poses(0.0, 2.0)
    assert c2w.shape == (5, 4, 4) and angles[0].tolist() == [0.0, 0.0, 2.0]
    # view 3 (azimuth 180) sits opposite the input camera
    np.testing.assert_allclose(c2w[3, :3, 3], -c2w[0, :3, 3], atol=1e-5)
    for bad, msg in (("[[0]]", "entry 0"), ("[[95, 0]]", "elevation"), ("nope", "neither")):
        with pytest.raises(ValueError, match=msg):
            resolve_cameras(bad, 4, 0)
    with pytest.raises(FileNotFoundError, match="sample.cameras"):
        load_cameras(tmp_path / "missing.json")


def test_frame_selection_and_fill():
    assert select_frames(10, 2) == [0, 2, 4, 6, 8]
    assert select_frames(10, 2, 3) == [0, 4, 8]
    assert select_frames(5, 1, 0) == [0, 1, 2, 3, 4]
    assert fill_frames(3, 12, "repeat") == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    pos = fill_frames(3, 5, "interpolate")
    assert pos == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert fill_frames(13, 12) == [float(i) for i in range(13)]
    with pytest.raises(ValueError, match="no frames"):
        select_frames(0)
