"""Where each stage's shards and manifests live under a profile's `out_dir` (one convention for every stage;
every reader and writer builds its paths here).

<out>/renders/shard-NNNNNN.tar            render samples (4D dataset)       curation.render
<out>/manifests/shard-NNNNNN.parquet      one row per asset of render shard N curation.render
<out>/latents/shard-NNNNNN.tar            latent samples of render shard N  curation.encode_latents
<out>/manifests/latents-NNNNNN.parquet    one row per sample of latent shard N
<out>/work/shard-NNNNNN/<uid>/            per-asset renders, job files, Blender logs
<out>/static/...                          the same tree for the static (orbit-only, F = 1) 3D dataset
"""

from __future__ import annotations

from pathlib import Path

RENDERS = "renders"
LATENTS = "latents"
MANIFESTS = "manifests"
WORK = "work"
SHARD_GLOB = "shard-*.tar"
"""Every finished shard of a folder (a ``.partial`` being written does not match)."""


def dataset_dir(out_dir: str | Path, mode: str) -> Path:
    """4D samples live under <out>; static (orbit-only) samples in their own tree <out>/static."""
    if mode not in ("4d", "static"):
        raise ValueError(f"mode must be '4d' or 'static', got {mode!r}")
    return Path(out_dir) / "static" if mode == "static" else Path(out_dir)


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def shard_file(directory: str | Path, shard: int) -> Path:
    """``<directory>/shard-NNNNNN.tar``."""
    return Path(directory) / f"{shard_name(shard)}.tar"


def shard_number(path: str | Path) -> int:
    """``.../shard-000012.tar`` -> 12; any other name is a ValueError."""
    name = Path(path).name
    stem = name.removesuffix(".tar")
    if not name.endswith(".tar") or not stem.startswith("shard-") or not stem[6:].isdigit():
        raise ValueError(f"{name}: not a shard-NNNNNN.tar name")
    return int(stem[6:])


def render_shard_path(out_dir: str | Path, shard: int) -> Path:
    return shard_file(Path(out_dir) / RENDERS, shard)


def latent_shard_path(out_dir: str | Path, shard: int) -> Path:
    return shard_file(Path(out_dir) / LATENTS, shard)


def render_manifest_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / MANIFESTS / f"{shard_name(shard)}.parquet"


def latent_manifest_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / MANIFESTS / f"latents-{shard:06d}.parquet"


def work_dir(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / WORK / shard_name(shard)


def render_shards(out_dir: str | Path) -> list[Path]:
    """The finished render shards of a dataset folder, in shard order."""
    return sorted((Path(out_dir) / RENDERS).glob(SHARD_GLOB))


def render_manifests(out_dir: str | Path) -> list[Path]:
    """The render manifests of a dataset folder, in shard order."""
    return sorted((Path(out_dir) / MANIFESTS).glob("shard-*.parquet"))


def manifest_for_shard(path: str | Path) -> tuple[Path, str] | None:
    """(the manifest of the stage that wrote shard ``path``, the status of its rows that are in the shard),
    or None where ``path`` is not a render or latent shard of our layout or its manifest does not exist."""
    path = Path(path)
    try:
        number = shard_number(path)
    except ValueError:
        return None
    root = path.parent.parent
    found = {
        RENDERS: (render_manifest_path(root, number), "rendered"),
        LATENTS: (latent_manifest_path(root, number), "encoded"),
    }.get(path.parent.name)
    return found if found is not None and found[0].is_file() else None
