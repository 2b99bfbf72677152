"""Config files: TOML or YAML, read into a dict of settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scircuits.platform.contract.errors import ConfigError


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file; give a .toml or .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (a binary file?); give a .toml or .yaml file"
        ) from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply to read") from None
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        reason = " ".join(str(exc).split())  # yaml's messages span lines
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings, not {type(data).__name__}")
    return data
