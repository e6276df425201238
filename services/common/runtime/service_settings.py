"""What every service's settings share beyond TLS (its logs), the class-name list two of them read, and the
host:port form of every address."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import NoDecode

from services.common.runtime.tls import TlsSettings


class ServiceSettings(TlsSettings):
    """The base of each service's settings (the subclass sets the env prefix)."""

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line (for log "
                                                "collectors); text: time, service, level and message, for a person")
    trace_file: Path | None = Field(None, description="write the round's OpenTelemetry spans here, one JSON line "
                                    "each (timings and ids, no values); unset: no tracing")


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


def _host_and_port(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{value!r}: write an IPv6 host in brackets, [::1]:50051")
    if not colon or not host or not re.fullmatch(r"[0-9]+", port):
        raise ValueError(f"{value!r} needs a host and a port, host:port (for example aggregator.example.org:50052); "
                         "without one, gRPC would silently dial port 443")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} is outside 1-65535")
    return value


# host:port, the port required and in range (gRPC takes "host" alone as port 443 and wraps a port past 65535).
Address = Annotated[str, AfterValidator(_host_and_port)]
