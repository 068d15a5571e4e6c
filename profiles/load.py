"""Profile selection: `pipelines.yaml` -> `PipelineConfig`, with `--set key=value` overrides."""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from profiles.loader import ConfigError, apply_overrides, deep_merge, from_dict
from profiles.schema import PipelineConfig

PIPELINES_YAML = Path(__file__).resolve().parent.parent / "pipelines.yaml"
DEFAULT_PROFILE = "demo"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no pipelines file at {path}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of profile name -> settings")
    return data


def profile_names(path: Path = PIPELINES_YAML) -> list[str]:
    return sorted(_read(path))


def resolve_profile_data(name: str, path: Path = PIPELINES_YAML) -> dict[str, Any]:
    """A profile's plain data after following `inherits:` chains (a profile may extend another)."""
    profiles = _read(path)
    chain: list[str] = []
    data: dict[str, Any] = {}
    current: str | None = name
    while current is not None:
        if current not in profiles:
            raise ConfigError(
                f"unknown profile {current!r} (profiles in {path.name}: {', '.join(sorted(profiles))})"
            )
        if current in chain:
            raise ConfigError(f"profile inheritance loops: {' -> '.join([*chain, current])}")
        chain.append(current)
        entry = dict(profiles[current])
        current = entry.pop("inherits", None)
        data = deep_merge(entry, data)
    data.setdefault("name", name)
    return data


def load_profile(
    name: str = DEFAULT_PROFILE, overrides: Sequence[str] = (), path: Path | str = PIPELINES_YAML
) -> PipelineConfig:
    """Load profile `name` and apply `section.key=value` overrides; raises ConfigError naming bad keys."""
    data = apply_overrides(resolve_profile_data(name, Path(path)), overrides)
    return from_dict(PipelineConfig, data)


def add_profile_args(parser: argparse.ArgumentParser) -> None:
    """The `--profile`, `--pipelines` and `--set` options every command-line entry point shares."""
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, help=f"profile of pipelines.yaml (default: {DEFAULT_PROFILE})"
    )
    parser.add_argument("--pipelines", default=str(PIPELINES_YAML), help="path of the pipelines file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile value, e.g. --set render.resolution=128 (repeatable; value parsed as YAML)",
    )


def profile_from_args(args: argparse.Namespace) -> PipelineConfig:
    return load_profile(args.profile, args.overrides, args.pipelines)


#: (section, field) of the folder and file knobs that Ray workers read; "" is the top level.
_PATH_FIELDS = (
    ("", "out_dir"),
    ("assets", "local_dir"),
    ("assets", "cache_dir"),
    ("assets", "objaverse_annotations"),
    ("curation.hdri", "library_dir"),
    ("encode", "tiny_dir"),
    ("encode", "clip_pretrained"),
    ("encode", "clip_model_config"),
    ("encode", "official_checkpoint"),
    ("encode", "official_vae_config"),
    ("fit4d.loss", "lpips_backbone_path"),
    ("fit4d.loss", "omnidata_checkpoint"),
)


def absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """A copy of `cfg` whose folder and file knobs are absolute: `~` expanded, relative values resolved
        against this process's working directory. Drivers call it before shipping the config to Ray workers,
        whose working directory on a cluster is wherever `ray start` ran. Empty values stay empty;
        `encode.vae_path` and `sample.checkpoint` are resolved only when they name an existing local path
    (otherwise a hub id, a stage name)."""
    cfg = copy.deepcopy(cfg)

    def absolute(value: str) -> str:
        return str(Path(os.path.expanduser(value)).resolve()) if value else value

    for section, name in _PATH_FIELDS:
        node: Any = cfg
        for part in section.split(".") if section else ():
            node = getattr(node, part)
        setattr(node, name, absolute(getattr(node, name)))
    if cfg.encode.vae_path and Path(os.path.expanduser(cfg.encode.vae_path)).exists():
        cfg.encode.vae_path = absolute(cfg.encode.vae_path)
    if Path(os.path.expanduser(cfg.sample.checkpoint)).exists():  # else a stage name under out_dir
        cfg.sample.checkpoint = absolute(cfg.sample.checkpoint)
    return cfg
