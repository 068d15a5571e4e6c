"""Random sampler weights (UNet, VAE, CLIP image tower) saved in the layouts the loaders read, for timing the
stage-2 denoising of `benchmarks/fit4d.py` where no real weights can be copied (GBs).

    full: the `sv4d2` UNet (~2.0 B parameters) as a .safetensors file of our keys (what `sample.checkpoint`
          accepts), the SD2.1 VAE as a diffusers folder (`<root>/sd21/vae`, `save_pretrained`), OpenCLIP
          ViT-H-14 as an open_clip state dict (`open_clip_pytorch_model.bin`). Stored in float16 (the sampler
          runs the UNet in `sample.dtype` and the encoders in `encode.dtype`; loading casts): ~6 GB written.
    tiny: the same files for the tiny UNet and the tiny encoders (`model.encoders.make_tiny_encoders`), for a
          CPU dry run of the same code path.

The weights are built on `device` (a CUDA build of 2 B parameters takes seconds, a CPU one minutes) and the
returned `--set` overrides point the `sample`/`encode`/`model` sections at them. Random weights make the
denoised images meaningless: use them for time and memory only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

_DONE = "COMPLETE"


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}


def save_random_sampler_weights(
    root: str | Path, size: str = "full", device: str = "cpu", seed: int = 0
) -> list[str]:
    """Save random weights under `root` (once: a finished folder is reused) and return the overrides that
    load them (`fit4d.refiner=sampler` included)."""
    from safetensors.torch import save_file

    from model.config import get_config
    from model.unet import build_unet

    if size not in ("full", "tiny"):
        raise ValueError(f"size must be full or tiny, got {size!r}")
    root = Path(root).expanduser()
    unet_name = "sv4d2" if size == "full" else "tiny"
    unet_file = root / f"unet_{unet_name}.safetensors"
    overrides = [
        f"model.unet={unet_name}",
        f"sample.checkpoint={unet_file}",
        "encode.tiny=false",
        "fit4d.refiner=sampler",
    ]
    if size == "full":
        vae_dir, clip_file = root / "sd21", root / "clip" / "open_clip_pytorch_model.bin"
        overrides += [
            f"encode.vae_path={vae_dir}",
            "encode.vae_subfolder=vae",
            "encode.clip_model=ViT-H-14",
            f"encode.clip_pretrained={clip_file}",
        ]
    else:
        from model.encoders import make_tiny_encoders

        paths = make_tiny_encoders(root / "encoders")  # saved once, then only the paths
        overrides += [
            f"encode.vae_path={paths['vae_path']}",
            f"encode.vae_subfolder={paths['vae_subfolder']}",
            f"encode.clip_model={paths['clip_model']}",
            f"encode.clip_pretrained={paths['clip_pretrained']}",
            f"encode.clip_model_config={paths['clip_model_config']}",
        ]
    if (root / _DONE).is_file():
        return overrides
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.device(device):
        net = build_unet(get_config(unet_name))
    save_file(_half(net.state_dict()), str(unet_file))
    timings["unet_s"] = time.perf_counter() - t0
    del net
    if size == "full":
        import open_clip
        from diffusers import AutoencoderKL

        from model.official_encoders import SD21_VAE_CONFIG

        t0 = time.perf_counter()
        with torch.device(device):
            vae = AutoencoderKL(**SD21_VAE_CONFIG)
        vae.to("cpu").save_pretrained(vae_dir / "vae", safe_serialization=True)
        timings["vae_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.device(device):
            clip = open_clip.create_model("ViT-H-14", pretrained=None)
        clip_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_half(clip.state_dict()), clip_file)
        timings["clip_s"] = time.perf_counter() - t0
        del vae, clip
    (root / _DONE).write_text(json.dumps({"size": size, "seed": seed, "build_s": timings}))
    return overrides
