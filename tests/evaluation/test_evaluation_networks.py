"""LPIPS, CLIP and I3D through the real loaders, on tiny random networks saved first (networks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import networks as N
from evaluation.evaluate import Settings, evaluate_object, prepare_ground_truth


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return N.make_tiny_networks(tmp_path_factory.mktemp("nets") / "tiny", lpips_nets=("alex",))


@pytest.fixture(scope="module")
def nets(tiny: dict[str, str]) -> N.Networks:
    return N.load_networks(
        {"alex": tiny["lpips_alex_path"]},
        tiny["clip_model"],
        tiny["clip_pretrained"],
        tiny["clip_model_config"],
        tiny["i3d_path"],
        random_weights=True,
    )


def test_lpips_is_zero_for_identical_images_and_positive_otherwise(nets: N.Networks) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    lp = nets.lpips["alex"]
    assert N.lpips_distance(lp, x, x).tolist() == [0.0, 0.0, 0.0]
    d = N.lpips_distance(lp, x, y, batch_size=2)
    assert d.shape == (3,) and (d > 0).all()
    assert N.lpips_distance(lp, y, x).tolist() == pytest.approx(d.tolist(), rel=1e-5)  # symmetric


@pytest.mark.slow
def test_lpips_vgg_is_zero_for_identical_images(tmp_path: Path) -> None:
    paths = N.make_tiny_networks(tmp_path / "vgg", lpips_nets=("vgg",))
    lp = N.load_lpips("vgg", paths["lpips_vgg_path"])
    x = torch.rand(2, 3, 48, 48)
    assert N.lpips_distance(lp, x, x).tolist() == [0.0, 0.0]
    assert (N.lpips_distance(lp, x, x.flip(-1)) > 0).all()


def test_lpips_backbone_comes_from_the_file(tiny: dict[str, str], tmp_path: Path) -> None:
    a = N.load_lpips("alex", tiny["lpips_alex_path"])
    state = torch.load(tiny["lpips_alex_path"], weights_only=True)
    assert torch.equal(a.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(a.net.slice5, "10").weight, state["features.10.weight"])
    # the linear heads are torchmetrics' bundled LPIPS v0.1 weights, not random: non-negative by design
    assert all((lin.model[-1].weight >= 0).all() for lin in a.lins)
    other = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save(other, tmp_path / "zeros.pth")
    assert N.load_lpips("alex", str(tmp_path / "zeros.pth")).net.slice1[0].weight.abs().sum() == 0


def test_missing_and_foreign_weights_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(N.WeightsError, match=r"evaluation\.lpips_vgg_path"):
        N.load_lpips("vgg", str(tmp_path / "nope.pth"))
    torch.save({"classifier.0.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(N.WeightsError, match="features.0.weight"):
        N.load_lpips("alex", str(tmp_path / "foreign.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(N.WeightsError, match="cannot read"):
        N.load_lpips("alex", str(tmp_path / "garbage.pth"))
    with pytest.raises(N.WeightsError, match=r"evaluation\.clip_pretrained"):
        N.load_clip("ViT-B-32", str(tmp_path / "clip.bin"))
    with pytest.raises(N.WeightsError, match=r"evaluation\.i3d_path"):
        N.load_i3d(str(tmp_path / "i3d_torchscript.pt"))
    with pytest.raises(N.WeightsError, match="not a TorchScript"):
        N.load_i3d(str(tmp_path / "garbage.pth"))


def test_empty_paths_skip_the_metric(tiny: dict[str, str]) -> None:
    nets = N.load_networks({"vgg": ""}, "ViT-B-32", "", "", "")
    assert nets.lpips == {} and nets.clip is None and nets.i3d is None
    assert set(nets.skipped) == {"lpips_vgg", "clip_s", "fvd"}


def test_clip_embeddings_are_unit_and_identical_images_score_one(nets: N.Networks) -> None:
    x = torch.rand(4, 3, 40, 40)
    e = N.clip_embeddings(nets.clip, x, batch_size=3)
    assert e.shape == (4, N.TINY_CLIP_CONFIG["embed_dim"])
    assert (e * e).sum(-1).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    assert (e * N.clip_embeddings(nets.clip, x)).sum(-1).tolist() == pytest.approx([1.0] * 4, abs=1e-5)


def test_i3d_features_batch_by_length_and_keep_order(nets: N.Networks) -> None:
    g = torch.Generator().manual_seed(1)
    videos = [torch.rand(16, 3, 32, 32, generator=g), torch.rand(20, 3, 32, 32, generator=g)]
    videos.append(videos[0].clone())
    f = N.i3d_features(nets.i3d, videos, "cpu")
    assert f.shape == (3, 32)
    assert torch.equal(f[0], f[2]) and not torch.equal(f[0], f[1])
    alone = N.i3d_features(nets.i3d, videos[1:2], "cpu")
    assert torch.allclose(alone[0], f[1], atol=1e-5)
    with pytest.raises(
        (RuntimeError, torch.jit.Error), match="at least 9 frames"
    ):  # the stand-in enforces I3D's limit
        N.i3d_features(nets.i3d, [torch.rand(8, 3, 32, 32)], "cpu")


def _object(views: int, frames: int, res: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(views, frames, res, res, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[..., res // 4 : 3 * res // 4, res // 4 : 3 * res // 4, 3] = 255  # an opaque object in the middle
    return rgba


@pytest.mark.slow
def test_evaluate_object_known_answers_on_short_clips(nets: N.Networks) -> None:
    # 3 views x 4 frames: every FVD video is shorter than I3D's 9 frames and must be stretched
    gt = _object(3, 4, 48, 0)
    settings = Settings(batch_size=5)
    prep = prepare_ground_truth(gt, nets, settings)
    assert {k: v.shape[0] for k, v in prep.i3d.items()} == {"fvd_f": 3, "fvd_v": 4, "fvd_diag": 1, "fv4d": 1}
    metrics, per_video, feats = evaluate_object(gt, prep, nets, settings)
    assert metrics["psnr"] == metrics["psnr_fg"] == 100.0
    assert metrics["ssim"] == pytest.approx(1.0) and metrics["mse"] == 0.0
    assert metrics["lpips_alex"] == 0.0 and metrics["clip_s"] == pytest.approx(1.0, abs=1e-5)
    for variant in ("fvd_f", "fvd_v", "fvd_diag", "fv4d"):
        assert metrics[variant] == pytest.approx(0.0, abs=1e-9)
    assert [len(per_video[v]) for v in ("fvd_f", "fvd_v", "fvd_diag", "fv4d")] == [3, 4, 1, 1]
    other = _object(3, 4, 48, 1)
    worse, _, _ = evaluate_object(other, prep, nets, settings)
    assert worse["psnr"] < 20 and worse["lpips_alex"] > 0 and worse["clip_s"] < 1
    assert all(worse[v] > 0 for v in ("fvd_f", "fvd_v", "fvd_diag", "fv4d"))
    with pytest.raises(ValueError, match="does not match"):
        evaluate_object(_object(3, 3, 48, 1), prep, nets, settings)
