"""Where each stage's shards live under a profile's `out_dir` (one convention for every stage).

<out>/renders/shard-NNNNNN.tar      render samples (4D dataset)     curation.render
<out>/latents/shard-NNNNNN.tar      latent samples of render shard N curation.encode_latents
<out>/manifests/...                 per-shard manifests of both stages
<out>/static/...                    the same tree for the static (orbit-only, F = 1) 3D dataset
"""

from __future__ import annotations

from pathlib import Path


def dataset_dir(out_dir: str | Path, mode: str) -> Path:
    """4D samples live under <out>; static (orbit-only) samples in their own tree <out>/static."""
    if mode not in ("4d", "static"):
        raise ValueError(f"mode must be '4d' or 'static', got {mode!r}")
    return Path(out_dir) / "static" if mode == "static" else Path(out_dir)


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"
