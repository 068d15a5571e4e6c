import numpy as np
import pytest
import torch

from model.clip_image import clip_preprocess, load_clip, resize_antialias
from model.encoders import Encoders, EncoderSpec, check_weights, describe_encoders, make_tiny_encoders
from model.vae import EncoderWeightsError, composite_on_white, decode_latents, load_vae, vae_input


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    return make_tiny_encoders(tmp_path_factory.mktemp("enc") / "tiny")


@pytest.fixture(scope="module")
def encoders(tiny_paths):
    return Encoders(EncoderSpec(**tiny_paths, tiny=True))


def _rgba(n=3, res=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, res, res, 4), dtype=np.uint8)


def test_composite_on_white_known_values():
    rgba = np.zeros((1, 8, 8, 4), np.uint8)
    rgba[0, :, :, :3] = [255, 0, 51]
    rgba[0, 0, :, 3] = 0  # transparent row: white whatever the colour
    rgba[0, 1, :, 3] = 255  # opaque row: the colour
    rgba[0, 2, :, 3] = 51  # 20% coverage
    rgb = composite_on_white(rgba)
    assert rgb.shape == (1, 3, 8, 8) and rgb.dtype == torch.float32
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(rgb[0, :, 1, 0], torch.tensor([1.0, 0.0, 0.2]))
    torch.testing.assert_close(rgb[0, :, 2, 0], torch.tensor([1.0, 0.8, 0.8 + 0.2 * 0.2]))
    x = vae_input(rgb)
    assert x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="not a multiple of 8"):
        vae_input(torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError, match="uint8 RGBA"):
        composite_on_white(np.zeros((1, 8, 8, 3), np.uint8))


def test_resize_matches_the_kornia_rule_used_by_the_official_embedder():
    # diffusers' SVD pipeline carries a copy of kornia's antialiased resize (the sgm conditioner's call); its
    # module needs transformers, so take the functions from its source
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("diffusers")
    src = Path(spec.origin).parent / "pipelines/stable_video_diffusion/pipeline_stable_video_diffusion.py"
    tree = ast.parse(src.read_text())
    wanted = {"_resize_with_antialiasing", "_compute_padding", "_filter2d", "_gaussian", "_gaussian_blur2d"}
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], [])
    namespace = {"torch": torch}
    exec(compile(module, str(src), "exec"), namespace)
    _resize_with_antialiasing = namespace["_resize_with_antialiasing"]
    assert len(module.body) == len(wanted)

    x = torch.rand(2, 3, 576, 576, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resize_antialias(x, (224, 224)), _resize_with_antialiasing(x, (224, 224)))
    small = x[:, :, :96, :96]  # upscaling: no blur, plain bicubic (kornia skips antialiasing)
    want = torch.nn.functional.interpolate(small, size=(224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(resize_antialias(small, (224, 224)), want)
    same = x[:, :, :224, :224]
    assert resize_antialias(same, (224, 224)) is same
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    torch.testing.assert_close(clip_preprocess(same), (same - mean) / std)


def test_encode_shapes_dtypes_and_determinism(encoders, tiny_paths):
    rgba = _rgba()
    out = encoders.encode(rgba)
    assert out.mean.shape == (3, 4, 4, 4) and out.std.shape == (3, 4, 4, 4)
    assert out.clip.shape == (3, 32)
    assert out.mean.dtype == out.std.dtype == out.clip.dtype == np.float32
    assert np.all(out.std > 0) and np.all(np.isfinite(out.mean))
    again = encoders.encode(rgba)
    np.testing.assert_array_equal(out.mean, again.mean)
    np.testing.assert_array_equal(out.clip, again.clip)
    # a second load of the saved weights (a new actor) gives the same numbers
    other = Encoders(EncoderSpec(**tiny_paths, tiny=True)).encode(rgba)
    np.testing.assert_array_equal(out.mean, other.mean)
    np.testing.assert_array_equal(out.std, other.std)
    np.testing.assert_array_equal(out.clip, other.clip)


def test_tiny_weights_are_reproducible_and_saved_before_loading(tmp_path, tiny_paths):
    again = make_tiny_encoders(tmp_path / "tiny")
    a = load_vae(tiny_paths["vae_path"]).state_dict()
    b = load_vae(again["vae_path"]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(again["clip_pretrained"], weights_only=True)
    visual = load_clip(again["clip_model"], again["clip_pretrained"], again["clip_model_config"])
    for name, value in visual.state_dict().items():
        assert torch.equal(value, ckpt[f"visual.{name}"])


def test_stored_mean_decodes_to_the_vaes_own_reconstruction(encoders):
    rgba = _rgba(n=2)
    out = encoders.encode(rgba)
    vae = encoders.vae
    with torch.no_grad():
        x = vae_input(composite_on_white(rgba))
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    want = ((recon + 1) / 2).clamp(0, 1)
    scale = vae.config.scaling_factor
    torch.testing.assert_close(decode_latents(out.mean * scale, vae), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(decode_latents(out.mean, vae, scaled=False), want, rtol=0, atol=1e-5)
    # from the fp16 storage: equal up to fp16 rounding of the latents
    stored = out.mean.astype(np.float16)[None]  # leading dims are kept: (1, 2, 4, h, w) -> (1, 2, 3, H, W)
    got = decode_latents(stored, vae, scaled=False)
    assert got.shape == (1, 2, 3, 32, 32)
    torch.testing.assert_close(got[0], want, rtol=0, atol=2e-3)


def test_stored_clip_equals_a_direct_call_on_the_composited_image(encoders):
    rgba = _rgba(n=2, res=48, seed=3)
    out = encoders.encode(rgba)
    with torch.no_grad():
        x = composite_on_white(rgba)
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        direct = encoders.clip((x - mean) / std).numpy()
    np.testing.assert_allclose(out.clip, direct, rtol=1e-5, atol=1e-6)


def test_describe_matches_the_loaded_models(encoders):
    info = describe_encoders(encoders.spec)
    assert info["clip_dim"] == encoders.clip_dim == 32
    assert info["latent_channels"] == 4 and info["downsample"] == 8
    assert info["vae_scaling_factor"] == pytest.approx(0.18215)
    assert info["background"] == [1.0, 1.0, 1.0]


def test_missing_weights_give_errors_naming_the_path(tmp_path):
    with pytest.raises(EncoderWeightsError, match="encode.vae_path is empty"):
        load_vae("")
    missing = tmp_path / "sd21"
    with pytest.raises(EncoderWeightsError, match=str(missing / "vae")):
        load_vae(str(missing))
    with pytest.raises(EncoderWeightsError, match="encode.clip_pretrained is empty"):
        load_clip("ViT-H-14", "")
    # a tag would make open_clip download: refused before open_clip sees it
    with pytest.raises(EncoderWeightsError, match="laion2b_s32b_b79k.*must be a local file"):
        load_clip("ViT-H-14", "laion2b_s32b_b79k")
    # a hub id that is not in the local cache: an error, no download attempt
    with pytest.raises(EncoderWeightsError, match="without a download"):
        load_vae("nobody-sv4d2-test/no-such-model")
    spec = EncoderSpec(vae_path=str(missing), vae_subfolder="vae", clip_model="ViT-H-14", clip_pretrained="")
    with pytest.raises(EncoderWeightsError, match="no VAE at"):
        check_weights(spec)


def test_matmul_attention_is_the_same_function(tiny_paths):
    from model.vae import use_matmul_attention

    vae = load_vae(tiny_paths["vae_path"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist
        assert use_matmul_attention(vae) == 2  # the encoder and decoder mid-blocks
        got = vae.encode(x).latent_dist
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logvar, want.logvar, rtol=1e-5, atol=1e-5)


def test_static_batch_splits_and_pads_so_the_vae_sees_one_shape(tiny_paths, encoders):
    """A compiled VAE must see one batch size (else it recompiles, then goes dynamic-shape and slower)."""
    static = Encoders(EncoderSpec(**tiny_paths, tiny=True, static_batch=4))
    seen = []
    moments = static._moments
    static._moments = lambda x: seen.append(tuple(x.shape)) or moments(x)
    for n in (1, 4, 6, 9):
        rgba = _rgba(n=n, seed=n)
        out, ref = static.encode(rgba), encoders.encode(rgba)
        assert out.mean.shape[0] == out.std.shape[0] == out.clip.shape[0] == n
        np.testing.assert_allclose(out.mean, ref.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.std, ref.std, rtol=1e-5, atol=1e-5)
    assert {s[0] for s in seen} == {4} and len(seen) == 1 + 1 + 2 + 3
    # channels_last: the padded batch keeps the layout of a full one (same strides: no recompile)
    cl = Encoders(EncoderSpec(**tiny_paths, tiny=True, static_batch=4, channels_last=True))
    layouts = []
    moments_cl = cl._moments
    cl._moments = lambda x: (
        layouts.append(x.is_contiguous(memory_format=torch.channels_last)) or moments_cl(x)
    )
    out = cl.encode(_rgba(n=6, seed=6))
    assert out.mean.shape[0] == 6 and layouts == [True, True]
    with pytest.raises(ValueError, match="at least one image"):
        static.encode(_rgba(n=0))
