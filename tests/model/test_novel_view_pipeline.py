"""`python -m model.sample` end to end on the tiny network and tiny encoders (saved to disk first and loaded
through the real code), batch mode with a corrupt input, resumption, and the command's errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import get_config
from model.unet import build_unet
from model.video_output import read_video_info, write_mp4
from profiles.load import load_profile
from shards.generated_schema import read_generated
from tests.synthetic import save_tiny_checkpoint

RES = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny 4d checkpoint under <root>/checkpoints/4d and a moving-square video."""
    root = tmp_path_factory.mktemp("nv")
    save_tiny_checkpoint(root)
    frames = np.full((5, 48, 64, 3), 255, np.uint8)
    for i in range(5):
        frames[i, 10:26, 4 + 6 * i : 20 + 6 * i] = (180, 40, 40)
    write_mp4(root / "square.mp4", frames, fps=5)
    return root


def overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"out_dir={root}",
        f"encode.tiny_dir={root / 'tiny_encoders'}",
        f"sample.resolution={RES}",
        "sample.num_steps=2",
        "sample.frames_per_pass=4",
        "sample.progress=false",
        *extra,
    ]


@pytest.mark.slow
def test_sample_command_end_to_end_and_resume(workspace, capsys):
    from model.sample import main

    out = workspace / "out_square"
    args = [
        "--out",
        str(out),
        *sum((["--set", o] for o in overrides(workspace, "sample.crop=per_frame")), []),
    ]
    assert main([str(workspace / "square.mp4"), *args]) == 0
    names = sorted(p.name for p in out.iterdir())
    for n in (
        "input.mp4",
        "view_01.mp4",
        "view_04.mp4",
        "grid.mp4",
        "grid.png",
        "cameras.json",
        "generated.tar",
    ):
        assert n in names
    assert read_video_info(out / "view_02.mp4") == (5, RES, RES)
    assert read_video_info(out / "grid.mp4") == (5, RES, 5 * RES)
    g = read_generated(str(out / "generated.tar"))
    assert g.images.shape == (5, 5, RES, RES, 4) and g.key == "square"
    assert g.meta["checkpoint"].endswith("step_0000003") and g.meta["seed"] == 23
    assert g.meta["windows"] == [[0, 3, None], [1, 4, 1]]
    np.testing.assert_allclose(g.angles[1:, 1], [60, 120, 180, 240])
    # per-frame crop boxes follow the square (6 px per frame to the right, constant size)
    np.testing.assert_allclose(np.diff(g.crop_boxes[:, 0]), 6.0)
    np.testing.assert_allclose(g.crop_boxes[:, 2] - g.crop_boxes[:, 0], 16 / 0.9, rtol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 5 and summary["views"] == 4
    # the same seed gives the same views
    first = g.images.copy()
    capsys.readouterr()
    assert main([str(workspace / "square.mp4"), *args]) == 0
    assert "complete" in capsys.readouterr().out  # resumable: nothing is redone
    assert main([str(workspace / "square.mp4"), *args, "--force"]) == 0
    np.testing.assert_array_equal(read_generated(str(out / "generated.tar")).images, first)

    # start-from-image: views 1..N of that sample noised to step 1 of 2
    out2 = workspace / "out_from_image"
    more = overrides(
        workspace,
        "sample.crop=per_frame",
        "sample.start_step=1",
        f"sample.init_images={out / 'generated.tar'}",
    )
    assert (
        main([str(workspace / "square.mp4"), "--out", str(out2), *sum((["--set", o] for o in more), [])]) == 0
    )
    g2 = read_generated(str(out2 / "generated.tar"))
    assert g2.meta["start_step"] == 1 and g2.images.shape == g.images.shape


def test_sample_command_errors_are_one_line(workspace, capsys, tmp_path):
    from model.sample import main

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    sets = sum((["--set", o] for o in overrides(workspace)), [])
    assert main([str(bad), "--out", str(tmp_path / "o"), *sets]) == 2
    assert "cannot read" in capsys.readouterr().out
    sets = sum((["--set", o] for o in overrides(workspace, "sample.checkpoint=nowhere")), [])
    assert main([str(workspace / "square.mp4"), "--out", str(tmp_path / "o"), *sets]) == 2
    assert "set sample.checkpoint" in capsys.readouterr().out


def input_folder(tmp_path: Path, workspace: Path, good: str, corrupt: str) -> Path:
    """A folder of batch inputs: the moving-square video as `good` and garbage bytes as `corrupt`."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / good).write_bytes((workspace / "square.mp4").read_bytes())
    (inputs / corrupt).write_bytes(b"garbage")
    return inputs


@pytest.mark.slow
def test_batch_rows_record_failures_and_skip_finished_inputs(workspace, tmp_path):
    from model.sample_batch import list_inputs, read_manifest, run_inputs, write_manifest

    inputs = input_folder(tmp_path, workspace, "a.mp4", "zz_corrupt.mp4")
    specs = list_inputs(inputs)
    assert [Path(s).name for s in specs] == ["a.mp4", "zz_corrupt.mp4"]
    cfg = load_profile(
        "demo", overrides(workspace, "sample.views_per_pass=2", "sample.cameras=[[0, 90], [0, 270]]")
    )
    rows = run_inputs(cfg, specs, tmp_path / "out")
    assert [r["status"] for r in rows] == ["done", "failed"]
    assert "cannot read" in rows[1]["reason"]
    assert (tmp_path / "out" / "a" / "summary.json").is_file()
    write_manifest(tmp_path / "out" / "manifest.parquet", rows)
    assert read_manifest(tmp_path / "out" / "manifest.parquet")[1]["status"] == "failed"
    again = run_inputs(cfg, specs, tmp_path / "out")
    assert [r["status"] for r in again] == ["skipped", "failed"]


@pytest.mark.slow
def test_batch_runs_as_ray_tasks(workspace, tmp_path):
    import ray

    from model.sample_batch import MANIFEST, read_manifest, run_batch

    inputs = input_folder(tmp_path, workspace, "b.mp4", "c.mp4")
    cfg = load_profile(
        "demo", overrides(workspace, "sample.views_per_pass=2", "sample.cameras=[[0, 90], [0, 180]]")
    )
    try:
        ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
        rows = run_batch(cfg, inputs, tmp_path / "out", inputs_per_task=1)
    finally:
        ray.shutdown()
    assert [r["status"] for r in rows] == ["done", "failed"]
    manifest = read_manifest(tmp_path / "out" / MANIFEST)
    assert [r["key"] for r in manifest] == ["b", "c"]
    assert read_generated(str(tmp_path / "out" / "b" / "generated.tar")).images.shape[0] == 3


def test_official_checkpoint_loads_through_the_converter(workspace, tmp_path):
    """An official-layout file (model.diffusion_model.* keys) of the tiny geometry: the same weights come out,
    and the encoders come from the `encode` section when `sample.encoders_from_checkpoint` is false."""
    from safetensors.torch import save_file

    from model.convert import ours_to_official
    from model.novel_views import load_encoders, load_network

    torch.manual_seed(1)
    net = build_unet(get_config("tiny"))
    path = tmp_path / "sv4d2.safetensors"
    save_file({ours_to_official(k): v.contiguous() for k, v in net.state_dict().items()}, str(path))
    cfg = load_profile(
        "demo", overrides(workspace, f"sample.checkpoint={path}", "sample.encoders_from_checkpoint=false")
    )
    loaded, info = load_network(cfg, torch.device("cpu"))
    assert info["kind"] == "official" and info["source"] == "sv4d2"
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    assert load_encoders(cfg, torch.device("cpu")).clip_dim == 32
    missing = load_profile("demo", overrides(workspace, f"sample.checkpoint={tmp_path / 'nope'}"))
    with pytest.raises(FileNotFoundError, match="sample.checkpoint"):
        load_network(missing, torch.device("cpu"))
