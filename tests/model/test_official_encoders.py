"""The encoders' weights from an official checkpoint: layout vs the reference TSV, and an exact round trip."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.clip_image import TINY_CLIP_CONFIG, TINY_CLIP_NAME, clip_preprocess
from model.convert import CLIP_PREFIX, VAE_DECODER_PREFIX, VAE_ENCODER_PREFIX
from model.encoders import Encoders, EncoderSpec, check_weights, describe_encoders, resolve_spec
from model.official_encoders import (
    SD21_VAE_CONFIG,
    OfficialCheckpointError,
    build_clip_visual,
    build_vae,
    diffusers_to_ldm_vae,
    ldm_to_diffusers_vae,
    load_official_clip,
    load_official_vae,
    official_clip_layout,
    official_vae_layout,
    to_official_state_dict,
    vae_config,
)
from model.vae import TINY_VAE_CONFIG, EncoderWeightsError, composite_on_white, decode_latents, vae_input

TSV = Path(__file__).resolve().parents[3] / "shared" / "reference" / "sv4d2_checkpoint_keys.tsv"
TEXT_LEFTOVERS = {
    "positional_embedding",
    "text_projection",
    "logit_scale",
    "token_embedding.weight",
    "ln_final.weight",
    "ln_final.bias",
}


@pytest.fixture(scope="module")
def tsv() -> dict[str, tuple[int, ...]]:
    if not TSV.is_file():
        pytest.fail(f"missing reference layout {TSV}")
    out = {}
    for line in TSV.read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        out[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return out


def _under(layout: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in layout.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------------------
# Layout against the reference TSV (full size, meta device)


def test_full_size_vae_layout_equals_the_official_one(tsv):
    vae = build_vae()  # SD2.1, meta
    assert vae.config.block_out_channels == [128, 256, 512, 512] and vae.config.scaling_factor == 0.18215
    layout = official_vae_layout(vae)
    # encoder + quant_conv from the conditioner's embedder, decoder from the first stage: key sets and shapes
    want = {
        k: v
        for k, v in tsv.items()
        if k.startswith((VAE_ENCODER_PREFIX + "encoder.", VAE_ENCODER_PREFIX + "quant_conv."))
        or k.startswith(VAE_DECODER_PREFIX)
    }
    assert len(want) == 108 + 138  # 106 encoder + 2 quant_conv; 138 decoder
    assert layout == want
    # the embedder's whole AutoencoderKLModeOnly (its own decoder and post_quant_conv too) is the diffusers
    # AutoencoderKL with a post_quant_conv under the same inverse mapping
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        full = AutoencoderKL(**SD21_VAE_CONFIG)
    ldm = {k: tuple(t.shape) for k, t in diffusers_to_ldm_vae(full.state_dict()).items()}
    assert ldm == _under(tsv, VAE_ENCODER_PREFIX) and len(ldm) == 248


def test_inverse_mapping_is_exact_for_diffusers_converter():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        full = AutoencoderKL(**SD21_VAE_CONFIG)
    sd = full.state_dict()
    ldm = diffusers_to_ldm_vae(sd)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)  # LDM 1x1 conv
    back = ldm_to_diffusers_vae(ldm, SD21_VAE_CONFIG)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    with pytest.raises(ValueError, match="no LDM name"):
        diffusers_to_ldm_vae({"encoder.something_new.weight": torch.zeros(1)})


def test_full_size_clip_layout_equals_the_official_one(tsv):
    visual = build_clip_visual("ViT-H-14")
    layout = official_clip_layout(visual)
    clip_keys = _under(tsv, CLIP_PREFIX)
    assert layout == {CLIP_PREFIX + k: v for k, v in clip_keys.items() if k.startswith("visual.")}
    assert set(clip_keys) - {k.removeprefix(CLIP_PREFIX) for k in layout} == TEXT_LEFTOVERS
    assert sum(int(np.prod(s)) for s in layout.values()) == 632_076_800
    assert visual.output_dim == 1024


# ----------------------------------------------------------------------------------------------------------
# Round trip through a small fake official file


def _jitter_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    # GroupNorm/LayerNorm start at exactly 1 and 0: jitter every tensor so that a swapped mapping shows up
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A tiny VAE and CLIP tower, and a fake official file holding them (plus keys the loaders must skip)."""
    import open_clip
    from diffusers import AutoencoderKL

    d = tmp_path_factory.mktemp("official")
    vae_cfg_file = d / "vae_config.json"
    vae_cfg_file.write_text(json.dumps(TINY_VAE_CONFIG))
    clip_cfg_file = d / f"{TINY_CLIP_NAME}.json"
    clip_cfg_file.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(clip_cfg_file)

    torch.manual_seed(0)
    vae = _jitter_(AutoencoderKL(**TINY_VAE_CONFIG, use_post_quant_conv=False), 1)
    clip = _jitter_(open_clip.create_model(TINY_CLIP_NAME, pretrained=None), 2)
    sd = to_official_state_dict(vae, clip.visual)
    # what the real file also holds: the CLIP text leftovers, the embedder's own decoder and post_quant_conv,
    # a duplicate embedder and the UNet; none of it may be read into the encoders
    full_sd = clip.state_dict()
    for k in TEXT_LEFTOVERS:
        sd[CLIP_PREFIX + k] = full_sd[k].clone()
    for k, t in diffusers_to_ldm_vae(vae.state_dict()).items():
        if k.startswith("decoder."):
            sd[VAE_ENCODER_PREFIX + k] = torch.zeros_like(t)
        if k.startswith("encoder."):
            sd["conditioner.embedders.4.encoder." + k] = torch.zeros_like(t)
    sd[VAE_ENCODER_PREFIX + "post_quant_conv.weight"] = torch.zeros(4, 4, 1, 1)
    sd["model.diffusion_model.out.2.weight"] = torch.zeros(4, 8, 3, 3)
    path = d / "sv4d2_fake.safetensors"
    save_file({k: t.contiguous() for k, t in sd.items()}, str(path))
    spec = EncoderSpec(
        vae_path="",
        vae_subfolder="vae",
        clip_model=TINY_CLIP_NAME,
        clip_pretrained="",
        clip_model_config=str(clip_cfg_file),
        official_checkpoint=str(path),
        official_vae_config=str(vae_cfg_file),
    )
    return SimpleNamespace(dir=d, path=path, sd=sd, vae=vae, visual=clip.visual.eval(), spec=spec)


def test_inverse_mapping_round_trips_values(fake):
    sd = fake.vae.state_dict()
    back = ldm_to_diffusers_vae(diffusers_to_ldm_vae(sd), TINY_VAE_CONFIG)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_official_path_reproduces_the_original_encoders(fake):
    enc = Encoders(fake.spec)
    rgba = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 4), dtype=np.uint8)
    out = enc.encode(rgba)

    with torch.inference_mode():
        rgb = composite_on_white(rgba)
        post = fake.vae.encode(vae_input(rgb)).latent_dist
        emb = fake.visual(clip_preprocess(rgb, 224))
    assert out.mean.shape == (3, 4, 4, 4) and out.clip.shape == (3, TINY_CLIP_CONFIG["embed_dim"])
    assert np.abs(out.mean - post.mean.numpy()).max() <= 1e-6
    assert np.abs(out.std - post.std.numpy()).max() <= 1e-6
    assert np.abs(out.clip - emb.numpy()).max() <= 1e-6
    # the decoder (first_stage_model.*) decodes like the original's
    z = torch.from_numpy(out.mean)
    with torch.inference_mode():
        ref = ((fake.vae.decode(z).sample + 1) / 2).clamp(0, 1)
    assert (decode_latents(z, enc.vae, scaled=False) - ref).abs().max() <= 1e-6

    vae_report, clip_report = enc.load_reports["vae"], enc.load_reports["clip"]
    assert len(vae_report.loaded) == len(fake.vae.state_dict())
    assert set(clip_report.unused) == {CLIP_PREFIX + k for k in TEXT_LEFTOVERS}
    unused_vae = set(vae_report.unused)
    assert VAE_ENCODER_PREFIX + "post_quant_conv.weight" in unused_vae
    assert all(
        k.startswith((VAE_ENCODER_PREFIX + "decoder.", VAE_ENCODER_PREFIX + "post_quant_conv."))
        for k in unused_vae
    )
    assert not any(k.startswith("conditioner.embedders.4.") for k in vae_report.loaded)


def test_resolve_check_and_describe_the_official_spec(fake):
    cfg = SimpleNamespace(
        official_checkpoint=str(fake.path),
        official_vae_config=fake.spec.official_vae_config,
        tiny=False,
        vae_subfolder="vae",
        clip_model=TINY_CLIP_NAME,
        clip_model_config=fake.spec.clip_model_config,
        dtype="bfloat16",
        channels_last=False,
        compile=False,
        compile_mode="default",
    )
    spec = resolve_spec(cfg, fake.dir, "cpu")
    assert spec.official_checkpoint == str(fake.path) and spec.dtype == "float32"
    check_weights(spec)
    info = describe_encoders(spec)
    assert info["vae"] == info["clip_pretrained"] == "official:sv4d2_fake.safetensors"
    assert info["clip_dim"] == TINY_CLIP_CONFIG["embed_dim"] and info["downsample"] == 8
    assert vae_config(None)["use_post_quant_conv"] is False
    with pytest.raises(ValueError, match="exclude each other"):
        resolve_spec(SimpleNamespace(**{**vars(cfg), "tiny": True}), fake.dir, "cpu")


def _without(fake, drop: str, name: str, replace: torch.Tensor | None = None) -> Path:
    sd = dict(fake.sd)
    if replace is None:
        del sd[drop]
    else:
        sd[drop] = replace
    path = fake.dir / name
    save_file(sd, str(path))
    return path


def test_missing_or_misshapen_keys_are_named(fake):
    q = VAE_ENCODER_PREFIX + "encoder.mid.attn_1.q.weight"
    path = _without(fake, q, "missing_q.safetensors")
    with pytest.raises(OfficialCheckpointError, match=r"1 keys missing: conditioner\.embedders\.1\.encoder"):
        load_official_vae(path, fake.spec.official_vae_config)
    with pytest.raises(OfficialCheckpointError, match="mid.attn_1.q.weight"):
        check_weights(EncoderSpec(**{**fake.spec.to_dict(), "official_checkpoint": str(path)}))

    ln = CLIP_PREFIX + "visual.ln_post.weight"
    path = _without(fake, ln, "bad_shape.safetensors", replace=torch.zeros(3))
    with pytest.raises(OfficialCheckpointError, match=r"visual\.ln_post\.weight \(3,\) \(expected \(64,\)\)"):
        load_official_clip(path, TINY_CLIP_NAME, fake.spec.clip_model_config)

    missing = fake.dir / "nope.safetensors"
    with pytest.raises(EncoderWeightsError, match="no official checkpoint at"):
        Encoders(EncoderSpec(**{**fake.spec.to_dict(), "official_checkpoint": str(missing)}))


def test_half_precision_file_loads_into_float32(fake):
    path = fake.dir / "fp16.safetensors"
    save_file({k: t.half() for k, t in fake.sd.items()}, str(path))
    vae, report = load_official_vae(path, fake.spec.official_vae_config, dtype="float32")
    assert report.dtypes == {"float16": len(report.loaded)}
    with safe_open(str(path), "pt") as f:
        assert f.get_tensor(VAE_ENCODER_PREFIX + "quant_conv.weight").dtype == torch.float16
    ref = fake.vae.state_dict()
    got = vae.state_dict()
    assert all(got[k].dtype == torch.float32 for k in got)
    assert all(torch.equal(got[k], ref[k].half().float()) for k in ref)
