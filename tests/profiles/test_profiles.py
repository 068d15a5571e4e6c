from pathlib import Path

import pytest

from profiles import ConfigError, load_profile, profile_names, to_dict
from profiles.loader import parse_override


def test_profiles_load_into_typed_objects():
    assert {"demo", "sv4d2"} <= set(profile_names())
    demo = load_profile("demo")
    assert demo.name == "demo" and demo.assets.source == "procedural"
    paper = load_profile("sv4d2")
    assert paper.render.resolution == 576
    assert paper.render.orbit.num_views == 24 and paper.render.num_frames == 24
    assert paper.render.orbits == ["static", "dynamic"] and paper.render.device == "auto"


def test_override_any_value_and_types_are_checked():
    cfg = load_profile("demo", ["render.resolution=128", "render.orbit.fov_deg=40", "render.denoiser=OIDN"])
    assert cfg.render.resolution == 128 and cfg.render.orbit.fov_deg == 40.0
    assert isinstance(cfg.render.orbit.fov_deg, float) and cfg.render.denoiser == "OIDN"
    with pytest.raises(ConfigError, match="render.resolution"):
        load_profile("demo", ["render.resolution=big"])
    with pytest.raises(ConfigError, match="render.denoiser"):
        load_profile("demo", ["render.denoiser=magic"])


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="render.resolutoin"):
        load_profile("demo", ["render.resolutoin=64"])
    with pytest.raises(ConfigError, match="nosuchsection"):
        load_profile("demo", ["nosuchsection.x=1"])


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a:\n  render:\n    samples: 4\n    bogus: 1\n")
    with pytest.raises(ConfigError, match="render.bogus"):
        load_profile("a", path=path)


def test_inherits_and_validation(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base:\n  render: {samples: 4}\nchild:\n  inherits: base\n  render: {resolution: 64}\n")
    cfg = load_profile("child", path=path)
    assert cfg.render.samples == 4 and cfg.render.resolution == 64
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("nope", path=path)
    with pytest.raises(ConfigError, match="radius"):
        load_profile("child", ["render.orbit.radius=0.5"], path=path)


def test_round_trip_through_plain_data():
    cfg = load_profile("sv4d2")
    from profiles import PipelineConfig, from_dict

    assert from_dict(PipelineConfig, to_dict(cfg)) == cfg


def test_parse_override_yaml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_absolute_paths_for_workers_with_another_cwd(tmp_path, monkeypatch):
    from profiles.load import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sd21").mkdir()
    cfg = load_profile(
        "demo",
        [
            "out_dir=outputs/x",
            "assets.local_dir=assets",
            "curation.hdri.library_dir=hdri",
            "encode.vae_path=sd21",
            "encode.clip_pretrained=~/clip.bin",
            "fit4d.loss.lpips_backbone_path=vgg.pth",
            "sample.checkpoint=sd21",
        ],
    )
    got = absolute_paths(cfg)
    assert got.fit4d.loss.lpips_backbone_path == str(tmp_path / "vgg.pth")
    assert got.sample.checkpoint == str(tmp_path / "sd21")
    assert absolute_paths(load_profile("demo")).sample.checkpoint == "4d"  # a stage name, not a path
    assert got.out_dir == str(tmp_path / "outputs" / "x")
    assert got.assets.local_dir == str(tmp_path / "assets")
    assert got.curation.hdri.library_dir == str(tmp_path / "hdri")
    assert got.encode.vae_path == str(tmp_path / "sd21")
    assert got.encode.clip_pretrained == str(Path("~/clip.bin").expanduser())
    assert got.encode.tiny_dir == "" and got.assets.objaverse_annotations == ""  # empty stays empty
    assert cfg.out_dir == "outputs/x"  # the input is not modified
    hub = absolute_paths(load_profile("demo", ["encode.vae_path=stabilityai/stable-diffusion-2-1"]))
    assert hub.encode.vae_path == "stabilityai/stable-diffusion-2-1"  # a hub id, not a path
