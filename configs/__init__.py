"""Typed configs (`schema.py`), the bundled YAML files, and the tiny random-weight models."""
from tsa.configs.schema import (
    REQUIRED,
    Config,
    ConfigError,
    Geometry,
    config_from_dict,
    load_config,
    resolve_config_path,
)

__all__ = ["REQUIRED", "Config", "ConfigError", "Geometry", "config_from_dict", "load_config",
           "resolve_config_path"]
