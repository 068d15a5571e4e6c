"""Official checkpoint layouts (meta device, full size) and converter round trips (tiny config)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import convert
from model.config import SV4D2, TINY
from model.unet import build_unet, count_parameters

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
SV4D2_UNET_PARAMS = 2_010_961_338


def read_tsv(name: str) -> dict[str, tuple[int, ...]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"missing reference layout {path}")
    out = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        out[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return out


def meta_state_dict(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in layout.items()}


@pytest.fixture(scope="module")
def full_model():
    return build_unet(SV4D2, device="meta")


def test_full_size_network_matches_official_sv4d2_layout(full_model):
    official = read_tsv("sv4d2_checkpoint_keys.tsv")
    unet = {k: s for k, s in official.items() if k.startswith(convert.UNET_PREFIX)}
    ours = {k: tuple(v.shape) for k, v in full_model.state_dict().items()}
    assert len(unet) == 1924 and len(ours) == 1924
    assert count_parameters(full_model) == SV4D2_UNET_PARAMS
    assert sum(math.prod(s) for s in unet.values()) == SV4D2_UNET_PARAMS
    mapped = {convert.official_to_ours(k): s for k, s in unet.items()}
    assert mapped == ours  # every key maps, with its shape
    assert all(convert.ours_to_official(k) in unet for k in ours)


def test_converter_consumes_every_sv4d2_key():
    official = read_tsv("sv4d2_checkpoint_keys.tsv")
    assert convert.detect_source(official) == "sv4d2"
    reports: list[convert.ConversionReport] = []
    sd = convert.convert_state_dict(meta_state_dict(official), SV4D2, report=reports)
    rep = reports[0]
    assert len(sd) == rep.loaded == 1924
    assert rep.unused == [] and rep.missing == [] and rep.reshaped == {}
    assert rep.other_groups == {
        "clip": 398,
        "vae_decoder": 138,
        "vae_encoder": 248,
        "vae_encoder_duplicates": 496,
    }


def test_sv3d_p_init_renames_and_reshapes(full_model):
    official = read_tsv("sv3d_p_checkpoint_keys.tsv")
    unet_keys = [k for k in official if k.startswith(convert.UNET_PREFIX)]
    assert len(unet_keys) == 1428
    assert convert.detect_source(official) == "sv3d_p"
    assert sum(".time_stack." in k for k in unet_keys) == 636
    assert sum(".time_pos_embed." in k for k in unet_keys) == 64
    reports: list[convert.ConversionReport] = []
    sd = convert.convert_state_dict(meta_state_dict(official), SV4D2, report=reports)
    rep = reports[0]
    assert rep.unused == [] and rep.loaded == 1428 == len(sd)
    frame_keys = set(full_model.frame_attention_parameter_names())
    assert len(frame_keys) == 496
    assert set(rep.missing) == frame_keys
    # Exactly the 10 camera-MLP input weights at C = 320 and 640 change shape: 4C x C -> 4C x 1280.
    assert len(rep.reshaped) == 10
    for key, (old, new) in rep.reshaped.items():
        assert key.endswith("time_mix_time_embed.0.weight")
        c = old[1]
        assert c in (320, 640) and old == [4 * c, c] and new == [4 * c, 1280]
    ours = {k: tuple(v.shape) for k, v in full_model.state_dict().items()}
    assert all(tuple(v.shape) == ours[k] for k, v in sd.items())
    assert sum(math.prod(ours[k]) for k in frame_keys) == 372_161_280 + 99_185_600 + 16


def test_adapt_tensor_places_old_weights_in_first_columns():
    old = torch.randn(8, 2)
    new = convert.adapt_tensor("x.time_mix_time_embed.0.weight", old, (8, 5))
    assert torch.equal(new[:, :2], old) and torch.equal(new[:, 2:], torch.zeros(8, 3))
    with pytest.raises(ValueError, match="cannot be mapped"):
        convert.adapt_tensor("x.proj_in.weight", old, (8, 5))


def random_tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = build_unet(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def tiny_inputs(seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, f, v, hw = 1, 2, 3, 8
    return dict(
        x=torch.randn(b, f, v, 4, hw, hw, generator=g),
        timesteps=torch.randn(b, generator=g),
        cond_latent=torch.randn(b, f, 4, hw, hw, generator=g),
        clip_emb=torch.randn(b, f, TINY.context_dim, generator=g),
        polar_rad=torch.rand(b, f, v, generator=g),
        azimuth_rad=torch.rand(b, f, v, generator=g),
        ref_latents=torch.randn(b, v, 4, hw, hw, generator=g),
    )


EXTRA_KEYS = {
    "conditioner.embedders.0.open_clip.model.visual.proj": torch.ones(3, 2),
    "conditioner.embedders.1.encoder.encoder.conv_in.weight": torch.full((2, 3), 2.0),
    "conditioner.embedders.4.encoder.encoder.conv_in.weight": torch.full((2, 3), 2.0),
    "first_stage_model.decoder.conv_out.bias": torch.arange(3.0),
}


def test_tiny_round_trip_through_official_layout(tmp_path):
    model = random_tiny()
    official = {convert.ours_to_official(k): v.clone() for k, v in model.state_dict().items()}
    official.update(EXTRA_KEYS)
    path = tmp_path / "sv4d2.safetensors"
    save_file(official, str(path))
    loaded, rep = convert.load_unet_from_official(path, TINY, camera_attention="paper")
    assert rep.source == "sv4d2" and rep.unused == [] and rep.missing == [] and rep.initialized_new == []
    assert rep.other_groups == {"clip": 1, "vae_decoder": 1, "vae_encoder": 1, "vae_encoder_duplicates": 1}
    kw = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(model(**kw), loaded(**kw))
    half, _ = convert.load_unet_from_official(path, TINY, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())

    enc = convert.split_encoder_weights(path)
    assert enc["clip"].keys() == {"visual.proj"}
    assert enc["vae_encoder"].keys() == {"encoder.conv_in.weight"}
    assert torch.equal(enc["vae_decoder"]["decoder.conv_out.bias"], torch.arange(3.0))
    with pytest.raises(ValueError, match="unknown encoder groups"):
        convert.split_encoder_weights(path, groups=["unet"])


def test_tiny_sv3d_p_init_equals_3d_model(tmp_path):
    source = random_tiny(1)
    frame_keys = set(source.frame_attention_parameter_names())
    with torch.no_grad():
        for t in source.transformers():  # the sv3d_p camera MLP only sees the first C inputs
            t.time_mix_time_embed[0].weight[:, t.channels :] = 0
    official = {}
    for k, v in source.state_dict().items():
        if k in frame_keys:
            continue
        if k.endswith("time_mix_time_embed.0.weight"):
            v = v[:, : v.shape[0] // 4]  # 4C x C, as sv3d_p
        official[convert.ours_to_official(k, "sv3d_p")] = v.clone()
    assert any(".time_stack." in k for k in official) and any(".time_pos_embed." in k for k in official)
    path = tmp_path / "sv3d_p.safetensors"
    save_file(official, str(path))
    loaded, rep = convert.load_unet_from_official(path, TINY)
    assert rep.source == "sv3d_p" and rep.unused == []
    assert set(rep.initialized_new) == frame_keys
    assert len(rep.reshaped) == sum(1 for t in source.transformers() if t.channels < TINY.adm_in_channels)
    alpha_f = 1 - 1 / (1 + math.exp(-TINY.motion_merge_factor_init))
    assert all(abs(a_f - alpha_f) < 1e-6 for _, a_f in loaded.mix_alphas().values())
    kw = tiny_inputs()
    with torch.no_grad():
        expected = source(**kw, frame_attention=False)
        torch.testing.assert_close(loaded(**kw, frame_attention=True), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded(**kw, frame_attention=False), expected, rtol=0, atol=0)
    # The same through the in-memory path used by the trainer.
    target = build_unet(TINY)
    rep2 = convert.apply_to_model(target, convert.convert_state_dict(official, TINY), source="sv3d_p")
    assert set(rep2.initialized_new) == frame_keys
    with torch.no_grad():
        torch.testing.assert_close(target(**kw), expected, rtol=1e-5, atol=1e-6)


def test_incomplete_or_mismatched_checkpoints_are_rejected(tmp_path):
    model = random_tiny()
    official = {convert.ours_to_official(k): v for k, v in model.state_dict().items()}
    dropped = dict(official)
    dropped.pop(convert.UNET_PREFIX + "out.2.bias")
    save_file(dropped, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        convert.load_unet_from_official(tmp_path / "a.safetensors", TINY)
    bad = dict(official)
    bad[convert.UNET_PREFIX + "out.2.bias"] = torch.zeros(5)
    save_file(bad, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="out.2.bias"):
        convert.load_unet_from_official(tmp_path / "b.safetensors", TINY)
    extra = dict(official)
    extra[convert.UNET_PREFIX + "bogus.weight"] = torch.zeros(1)
    save_file(extra, str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="unused"):
        convert.load_unet_from_official(tmp_path / "c.safetensors", TINY)
    with pytest.raises(FileNotFoundError, match="not found"):
        convert.load_unet_from_official(tmp_path / "nope.safetensors", TINY)


def test_cli_writes_weights_config_and_report(tmp_path, capsys):
    model = random_tiny()
    official = {convert.ours_to_official(k): v for k, v in model.state_dict().items()}
    official.update(EXTRA_KEYS)
    save_file(official, str(tmp_path / "sv4d2.safetensors"))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tmp_path / "sv4d2.safetensors"), "--out", str(out), "--config", "tiny"]
    assert convert.main([*argv, "--save-encoders"]) == 0
    from safetensors.torch import load_file

    from model.config import load_config

    assert load_config(out) == TINY.replace(camera_attention="snapshot")  # the release's layout
    weights = load_file(str(out / convert.MODEL_FILE))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    report = json.loads((out / convert.REPORT_FILE).read_text())
    assert report["unused"] == [] and report["missing"] == [] and report["loaded"] == len(weights)
    assert load_file(str(out / "clip.safetensors")).keys() == {"visual.proj"}
    with pytest.raises(SystemExit):
        convert.main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out)])
    assert "does not exist" in capsys.readouterr().err


def test_camera_attention_follows_the_file_and_the_override(tmp_path):
    """sv4d2 files convert to the release's layout (snapshot; views for *8views*), sv3d_p to the config's
    (paper); --camera-attention overrides; config.json and the report name the mode."""
    from safetensors.torch import load_file

    from model.config import load_config

    model = random_tiny()
    official = {convert.ours_to_official(k): v for k, v in model.state_dict().items()}
    for name, mode in (("sv4d2.safetensors", "snapshot"), ("sv4d2_8views.safetensors", "views")):
        save_file(official, str(tmp_path / name))
        out = tmp_path / f"out-{mode}"
        argv = ["--checkpoint", str(tmp_path / name), "--out", str(out), "--config", "tiny"]
        assert convert.main(argv) == 0
        assert load_config(out).camera_attention == mode
        assert json.loads((out / convert.REPORT_FILE).read_text())["camera_attention"] == mode
        assert convert.resolve_camera_attention("auto", tmp_path / name) == mode
        assert convert.resolve_camera_attention("auto", out) == mode  # our folder: its config.json
        assert convert.main([*argv, "--camera-attention", "paper"]) == 0
        assert load_config(out).camera_attention == "paper"
        assert torch.equal(load_file(str(out / convert.MODEL_FILE))["out.2.bias"], model.out[2].bias)
    assert convert.resolve_camera_attention("auto", "") == "paper"
    assert convert.resolve_camera_attention("views", "") == "views"
    with pytest.raises(ValueError, match="camera_attention"):
        convert.resolve_camera_attention("3d", "")
    source = random_tiny(1)
    sv3d = {
        convert.ours_to_official(k, "sv3d_p"): v
        for k, v in source.state_dict().items()
        if k not in set(source.frame_attention_parameter_names())
    }
    save_file(sv3d, str(tmp_path / "sv3d_p.safetensors"))
    assert convert.resolve_camera_attention("auto", tmp_path / "sv3d_p.safetensors") == "paper"
    _, rep = convert.load_unet_from_official(tmp_path / "sv3d_p.safetensors", TINY)
    assert rep.camera_attention == "paper" and "sv3d_p" in rep.camera_attention_reason
