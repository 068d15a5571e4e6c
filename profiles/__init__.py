"""Pipeline profiles: `pipelines.yaml` loaded into typed config objects."""

from profiles.load import DEFAULT_PROFILE, PIPELINES_YAML, add_profile_args, load_profile, profile_names
from profiles.loader import ConfigError, apply_overrides, from_dict, to_dict
from profiles.schema import PipelineConfig

__all__ = [
    "DEFAULT_PROFILE",
    "PIPELINES_YAML",
    "ConfigError",
    "PipelineConfig",
    "add_profile_args",
    "apply_overrides",
    "from_dict",
    "load_profile",
    "profile_names",
    "to_dict",
]
