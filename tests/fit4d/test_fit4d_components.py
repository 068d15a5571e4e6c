"""fit4d building blocks against hand-computed or analytic answers: hash encoding, deformation at init,
volume rendering of a sphere, visibility weights, view and frame sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fit4d.cameras import image_rays, pixel_rays, spherical
from fit4d.field_components.hash_grid import PRIMES, HashGrid, level_resolutions
from fit4d.fields import DynamicNeRF
from fit4d.losses import visibility_weights, weighted_mse
from fit4d.rendering import composite, ray_aabb, render_rays
from fit4d.sampling import orthogonal_views, strided_patch, window_frames, window_size
from profiles.schema import Fit4DFieldConfig
from shards.cameras import c2w_opencv


def reference_hash_encoding(grid: HashGrid, x: np.ndarray) -> np.ndarray:
    """The encoding computed point by point, level by level, corner by corner, in Python integers."""
    table = grid.table.detach().double().numpy()
    offsets = grid.offsets.tolist()
    dim = x.shape[1]
    out = np.zeros((len(x), grid.num_levels, grid.features_per_level))
    for n, p in enumerate(x):
        for lvl, r in enumerate(grid.resolutions.tolist()):
            r = np.asarray(r)
            pos = np.clip(p, 0, 1) * r
            base = np.minimum(np.floor(pos).astype(int), r - 1)
            frac = pos - base
            for corner in range(2**dim):
                c = [(corner >> d) & 1 for d in range(dim)]
                ijk = [int(base[d] + c[d]) for d in range(dim)]
                if np.prod(r + 1) <= grid.table_size:
                    idx, stride = 0, 1
                    for d in range(dim):
                        idx += ijk[d] * stride
                        stride *= int(r[d]) + 1
                else:
                    idx = 0
                    for d in range(dim):
                        idx ^= ijk[d] * PRIMES[d]
                    idx %= grid.table_size
                w = np.prod([frac[d] if c[d] else 1 - frac[d] for d in range(dim)])
                out[n, lvl] += w * table[offsets[lvl] + idx]
    return out.reshape(len(x), -1)


def test_level_resolutions_geometric():
    assert level_resolutions(2, 2, 4) == [2, 4]
    assert level_resolutions(3, 16, 64) == [16, 32, 64]
    assert level_resolutions(1, 7, 100) == [7]


def test_hash_encoding_matches_reference_dense_and_hashed_levels():
    torch.manual_seed(0)
    grid = HashGrid(
        num_levels=4, features_per_level=2, log2_hashmap_size=8, base_resolution=3, max_resolution=40
    )
    grid.table.data.uniform_(-1, 1)
    dense = grid.dense.tolist()
    assert dense[0] and not dense[-1], "the test needs both dense and hashed levels"
    rng = np.random.default_rng(1)
    # worst cases: the box corners and faces (the last cell), exact vertex positions, and random points
    x = np.concatenate(
        [rng.random((40, 3)), [[0, 0, 0], [1, 1, 1], [1, 0, 0.5], [0.5, 1, 1]], [[1 / 3, 2 / 3, 0]]]
    )
    got = grid(torch.from_numpy(x).float()).detach().double().numpy()
    want = reference_hash_encoding(grid, x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_4d_hash_encoding_with_per_axis_resolutions_matches_reference():
    """The deformation's grid: 4 axes, time coarser than space; dense levels use mixed-radix strides."""
    torch.manual_seed(0)
    grid = HashGrid(
        num_levels=3,
        features_per_level=2,
        log2_hashmap_size=9,
        axis_resolutions=[[2, 2, 2, 1], [4, 4, 4, 2], [9, 9, 9, 3]],
    )
    grid.table.data.uniform_(-1, 1)
    assert grid.dense.tolist() == [True, True, False] and grid.dim == 4
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.random((30, 4)), [[0, 0, 0, 0], [1, 1, 1, 1], [0.5, 1, 0, 1 / 3]]])
    got = grid(torch.from_numpy(x).float()).detach().double().numpy()
    want = reference_hash_encoding(grid, x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("dim", [3, 4])
def test_hash_encoding_gradient_in_x_matches_finite_differences(dim):
    """The analytic normals differentiate the encoding in x: autograd through the multilinear weights
    against central differences (steps small enough to stay inside the cells of every level)."""
    torch.manual_seed(0)
    grid = HashGrid(num_levels=3, log2_hashmap_size=8, base_resolution=3, max_resolution=12, dim=dim)
    grid.table.data.uniform_(-1, 1)
    probe = torch.randn(grid.output_dim)
    x = torch.rand(16, dim) * 0.8 + 0.1
    xg = x.clone().requires_grad_(True)
    (grid(xg) @ probe).sum().backward()
    h = 1e-3
    fd = torch.stack(
        [((grid(x + h * e) - grid(x - h * e)) @ probe) / (2 * h) for e in torch.eye(dim)],
        -1,
    )
    # where a step crosses a cell face of some level, the encoding has a kink: compare elsewhere only
    scaled = x[:, None, :] * grid.resolutions[None].float()  # (N, L, D)
    to_face = ((scaled - scaled.round()).abs() / grid.resolutions[None].float()).amin(1)  # (N, D)
    smooth = to_face > 2 * h
    assert smooth.float().mean() > 0.8
    torch.testing.assert_close(xg.grad[smooth], fd[smooth], atol=2e-3, rtol=1e-2)


def test_hash_grid_large_coordinates_do_not_overflow():
    """Level resolution 2048 times the largest prime exceeds int32: int64 keeps the indices in range."""
    grid = HashGrid(num_levels=2, log2_hashmap_size=12, base_resolution=1024, max_resolution=2048)
    x = torch.tensor([[1.0, 1.0, 1.0], [0.999, 0.5, 0.999]])
    idx = grid.corner_indices(torch.full((1, 2, 3), 2047, dtype=torch.int64))
    assert int(idx.min()) >= 0 and int(idx.max()) < grid.table.shape[0]
    assert torch.isfinite(grid(x)).all()


def test_hash_grid_table_gradients_are_fp32():
    grid = HashGrid(num_levels=2, log2_hashmap_size=8, base_resolution=2, max_resolution=8)
    grid(torch.rand(16, 3)).sum().backward()
    assert grid.table.grad.dtype == torch.float32 and grid.table.grad.abs().sum() > 0


def tiny_field_cfg(**kw) -> Fit4DFieldConfig:
    base = dict(
        num_levels=4,
        log2_hashmap_size=10,
        base_resolution=4,
        max_resolution=32,
        hidden_dim=16,
        deform_hidden_dim=16,
        deform_layers=2,
        deform_pos_freqs=2,
        deform_time_freqs=2,
    )
    base.update(kw)
    return Fit4DFieldConfig(**base)


@pytest.mark.parametrize("encoding", ["frequency", "hash"])
def test_deformation_is_identity_at_init(encoding):
    torch.manual_seed(0)
    model = DynamicNeRF(tiny_field_cfg(deform_encoding=encoding, deform_max_resolution=16))
    x = (torch.rand(64, 3) * 2 - 1) * model.bound
    t = torch.rand(64, 1)
    assert torch.equal(model.canonical(x, t), x)
    dyn = model(x, t)
    model.dynamic = False
    static = model(x, torch.zeros(64, 1))
    assert torch.equal(dyn[0], static[0]) and torch.equal(dyn[1], static[1])


def sphere_field(radius: float, sigma_in: float, softness: float = 0.0):
    """Constant density inside a sphere (softness > 0: a smooth shell of that width), white-to-red colour."""

    def fn(x: torch.Tensor, t: torch.Tensor):
        r = x.norm(dim=-1)
        if softness > 0:
            sigma = sigma_in * torch.sigmoid((radius - r) / softness)
        else:
            sigma = sigma_in * (r < radius).to(x.dtype)
        rgb = torch.stack([torch.ones_like(r), 0.5 * torch.ones_like(r), 0.25 + 0 * t[:, 0]], -1)
        return sigma, rgb

    return fn


def test_composite_worked_example():
    out = composite(
        torch.tensor([[math.log(2.0)]]),
        torch.tensor([[[1.0, 0.0, 0.0]]]),
        torch.tensor([[2.0]]),
        torch.tensor([[1.0]]),
        background=1.0,
    )
    assert out["opacity"].item() == pytest.approx(0.5)
    assert out["rgb"][0].tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert out["depth"].item() == pytest.approx(2.0)


def test_ray_aabb_hits_and_misses():
    o = torch.tensor([[2.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    near, far, hit = ray_aabb(o, d, 0.5)
    assert hit.tolist() == [True, False, True]
    assert near[0].item() == pytest.approx(1.5) and far[0].item() == pytest.approx(2.5)
    assert near[2].item() == 0.0 and far[2].item() == pytest.approx(0.5)  # origin inside the box


@pytest.mark.parametrize("sigma_in", [1e4, 3.0])
def test_sphere_opacity_and_depth_are_analytic(sigma_in):
    """Rays at impact parameter b through a sphere of radius r with constant density: opacity
    1 - exp(-sigma 2 sqrt(r^2 - b^2)), depth of an opaque sphere D - sqrt(r^2 - b^2)."""
    r, dist = 0.4, 2.0
    b = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.39, 0.45])
    origins = torch.stack([torch.full_like(b, dist), b, torch.zeros_like(b)], -1)
    dirs = torch.tensor([[-1.0, 0.0, 0.0]]).expand_as(origins)
    out = render_rays(sphere_field(r, sigma_in), origins, dirs, torch.zeros(6), 0.5, 4096)
    chord = 2 * torch.sqrt((r**2 - b**2).clamp(min=0))
    want_opacity = 1 - torch.exp(-sigma_in * chord)
    np.testing.assert_allclose(out["opacity"].numpy(), want_opacity.numpy(), atol=2e-3)
    if sigma_in > 100:
        hit = b < r
        want_depth = dist - chord[hit] / 2
        np.testing.assert_allclose(out["depth"][hit].numpy(), want_depth.numpy(), atol=2e-3)
        # colour: the sphere's where opaque, the white background where the ray misses
        assert out["rgb"][0].tolist() == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)
        assert out["rgb"][-1].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_visibility_weights_on_a_sphere_match_v_dot_n():
    """Analytic normals of a (smooth) sphere rendered from a real camera: W = clip(v . n, 0, 1) equals the
    cosine sqrt(r^2 - b^2) / r at the hit point for impact parameter b."""
    r = 0.4
    c2w = torch.from_numpy(c2w_opencv(20.0, 30.0, 2.0)).float()
    K = torch.tensor([[60.0, 0, 16], [0, 60.0, 16], [0, 0, 1]])
    origins, dirs = image_rays(c2w, K, 32, 32)
    out = render_rays(
        sphere_field(r, 5e3, softness=1e-3),
        origins,
        dirs,
        torch.zeros(len(dirs)),
        0.5,
        2048,
        with_normals=True,
    )
    centre_dist = torch.cross(origins, dirs, dim=-1).norm(dim=-1)  # impact parameter b of each ray
    inside = centre_dist < r - 0.03
    assert inside.sum() > 50
    w = visibility_weights(dirs, out["normal"].detach())
    want = torch.sqrt(r**2 - centre_dist**2) / r
    np.testing.assert_allclose(w[inside].numpy(), want[inside].numpy(), atol=0.02)
    # pure function: back-facing and grazing normals give 0, facing 1
    d = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    n = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert visibility_weights(d, n).tolist() == [1.0, 0.0, 0.0]


def test_early_stop_renders_the_same_from_a_fraction_of_the_gradient_samples():
    """early_stop_eps: the samples behind an opaque sphere's surface (transmittance < eps) leave the
    gradient pass; colour, opacity, depth, normals and the colour parameter's gradient (the sum of the
    weights) stay within what they could add, and the pass with gradients sees under half the points."""
    r = 0.4
    c2w = torch.from_numpy(c2w_opencv(20.0, 30.0, 2.0)).float()
    K = torch.tensor([[60.0, 0, 16], [0, 60.0, 16], [0, 0, 1]])
    origins, dirs = image_rays(c2w, K, 32, 32)
    tint = torch.tensor(0.5, requires_grad=True)
    counts: list[tuple[int, bool]] = []

    def field(x: torch.Tensor, t: torch.Tensor):
        counts.append((x.shape[0], torch.is_grad_enabled()))
        sigma = 5e3 * torch.sigmoid((r - x.norm(dim=-1)) / 1e-2)
        rgb = torch.stack([tint + 0.5 * x[:, 0], 0.5 + 0.5 * x[:, 1], 0.5 + 0.5 * x[:, 2]], -1)
        return sigma, rgb

    outs, grads, grad_points = [], [], []
    for eps in (0.0, 1e-4):
        counts.clear()
        out = render_rays(
            field,
            origins,
            dirs,
            torch.zeros(len(dirs)),
            0.5,
            512,
            occupied=lambda x: x.norm(dim=-1) < r + 0.05,  # an occupancy grid's shell around the sphere
            with_normals=True,
            early_stop_eps=eps,
        )
        (g,) = torch.autograd.grad(out["rgb"].sum(), tint)
        outs.append(out)
        grads.append(float(g))
        grad_points.append(sum(n for n, with_grad in counts if with_grad))
    full, pruned = outs
    for key in ("rgb", "opacity", "normal"):
        assert (full[key] - pruned[key]).abs().max() < 1e-4 * 3, key
    assert (full["depth"] - pruned["depth"]).abs().max() < 1e-4 * 3
    assert abs(grads[1] - grads[0]) < 1e-4 * len(dirs)
    assert grad_points[1] < 0.5 * grad_points[0]


def test_weighted_mse_ignores_zero_weight_pixels():
    pred, target = torch.zeros(2, 3), torch.tensor([[1.0, 1, 1], [0.5, 0.5, 0.5]])
    assert weighted_mse(pred, target, torch.tensor([0.0, 1.0])).item() == pytest.approx(0.125)


def test_pixel_rays_follow_the_opencv_convention():
    """The centre pixel looks at the origin; pixels to the right/below point along the camera's x/y."""
    c2w = torch.from_numpy(c2w_opencv(0.0, 0.0, 2.0)).float()  # at +X looking along -X; x -> +Y, y -> -Z
    K = torch.tensor([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]])
    o, d = pixel_rays(c2w, K, torch.tensor([1.5, 1.5, 3.5]), torch.tensor([1.5, 3.5, 1.5]))
    assert d[0].tolist() == pytest.approx([-1.0, 0.0, 0.0], abs=1e-6)
    assert d[1, 1] > 0 and d[2, 2] < 0
    assert o[0].tolist() == pytest.approx([2.0, 0.0, 0.0])
    ang = spherical(np.stack([c2w_opencv(10.0, 250.0, 1.5)]))
    assert ang[0].tolist() == pytest.approx([10.0, 250.0, 1.5])


def test_frame_window_grows_to_all_frames():
    sizes = [window_size(it, 100, 12, 2, 0.5) for it in range(0, 101, 10)]
    assert sizes[0] == 2 and sizes[5] == 12 and sizes[-1] == 12
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    rng = np.random.default_rng(0)
    for w in (1, 3, 12):
        f = window_frames(w, 4, rng)
        assert len(set(f.tolist())) == len(f) == min(4, w) and f.max() < w


def test_orthogonal_views_are_quarter_turns_from_the_input():
    az = np.arange(24) * 15.0
    rng = np.random.default_rng(0)
    views = orthogonal_views(az, np.arange(24), input_view=2, jitter_deg=0.0, rng=rng)
    assert (az[views] % 360).tolist() == [30.0, 120.0, 210.0, 300.0]
    for _ in range(20):
        v = orthogonal_views(az, np.arange(24), 0, 45.0, rng)
        diffs = np.diff(np.sort(az[v]))
        assert len(v) == 4 and np.all(np.abs(diffs - 90) <= 15)
    # held-out views are never drawn
    train = np.array([0, 1, 7, 13, 19])
    assert set(orthogonal_views(az, train, 0, 45.0, rng).tolist()) <= set(train.tolist())


def test_strided_patch_stays_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows, cols = strided_patch(20, 30, 8, 4, rng)
        assert rows.shape == (8, 8) and rows.min() >= 0 and rows.max() < 20 and cols.max() < 30
    with pytest.raises(ValueError, match="patch_size"):
        strided_patch(4, 4, 8, 1, rng)


def test_a_compiled_field_renders_normals_and_trains_like_the_eager_one():
    """fit4d.compile: the normals' first derivative (retain_graph) then the loss's backward through a
    compiled field. AOTAutograd (the `aot_eager` backend: no C compiler needed) refused this before
    compile_field turned donated buffers off."""
    from fit4d.loop import compile_field

    torch.manual_seed(0)
    model = DynamicNeRF(tiny_field_cfg(deform_encoding="hash", deform_max_resolution=16))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    origins = torch.tensor([[0.0, 0.0, -2.0]]).repeat(64, 1)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    times = torch.rand(64)
    grads = []
    for fn in (model, compile_field(model, backend="aot_eager")):
        model.zero_grad()
        out = render_rays(fn, origins, dirs, times, model.bound, 32, with_normals=True)
        out["rgb"].sum().backward()
        grads.append((out["normal"].detach(), model.encoding.table.grad.clone()))
    (n_eager, g_eager), (n_comp, g_comp) = grads
    assert g_eager.abs().sum() > 0
    torch.testing.assert_close(n_comp, n_eager, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_comp, g_eager, atol=1e-6, rtol=1e-4)
