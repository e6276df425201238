"""What every service's settings share beyond TLS (its logs), and the class-name list two of them read."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode

from services.common.runtime.tls import TlsSettings


class ServiceSettings(TlsSettings):
    """The base of each service's settings (the subclass sets the env prefix)."""

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line (for log "
                                                "collectors); text: time, service, level and message, for a person")


def _split_class_names(value: object) -> object:
    if isinstance(value, str):
        value = tuple(name.strip() for name in value.split(","))
    if isinstance(value, (tuple, list)):
        if not all(value):
            raise ValueError(f"class_names {','.join(value)!r} has an empty name")
        if len(set(value)) != len(value):
            raise ValueError(f"class_names {','.join(value)} repeats a name")
    return value


# Comma-separated in the environment (NORMAL,PNEUMONIA): the class names in label order.
ClassNames = Annotated[tuple[str, ...] | None, NoDecode, BeforeValidator(_split_class_names)]


def require_one_name_per_class(names: tuple[str, ...] | None, num_classes: int | None) -> None:
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise ValueError(f"class_names {','.join(names)} names {len(names)} classes; num_classes is {num_classes}")
