"""Settings objects to the environment that starts a service with them, and back.

The pydantic settings models are the only definition of each setting and its default.
A launcher builds a service's settings object, then starts the service with
`settings_env(settings)`; the service reads exactly those values back.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings


def env_prefix(settings_class: type[BaseSettings]) -> str:
    return str(settings_class.model_config.get("env_prefix", ""))


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def settings_env(settings: BaseSettings) -> dict[str, str]:
    """Every setting that has a value, as `<PREFIX><NAME>=<value>`; unset optional settings are left out."""
    prefix = env_prefix(type(settings))
    return {f"{prefix}{name.upper()}": _env_value(getattr(settings, name))
            for name in type(settings).model_fields if getattr(settings, name) is not None}


def child_environment(base: dict[str, str], settings: BaseSettings) -> dict[str, str]:
    """`base` (the launcher's environment) without any setting of this service, then exactly `settings`: the
    launcher's own values for the service were read into `settings` already, so none is lost."""
    prefix = env_prefix(type(settings))
    return {**{k: v for k, v in base.items() if not k.startswith(prefix)}, **settings_env(settings)}


def known_settings(settings_class: type[BaseSettings]) -> frozenset[str]:
    return frozenset(settings_class.model_fields)
