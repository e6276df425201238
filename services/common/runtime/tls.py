"""Mutual TLS for every gRPC connection, and the peer identity it proves.

Every service presents a certificate signed by the consortium CA and requires one
from its peer. Clients check the server's certificate against the service *name*
(`key-authority`, `aggregator`), not the address, so the same certificates work
on one machine or one host per service. Plaintext gRPC exists only behind an
explicit `insecure` setting, for local development, and logs a loud warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

log = logging.getLogger(__name__)

KEY_AUTHORITY_NAME = "key-authority"
AGGREGATOR_NAME = "aggregator"
GRPC_MESSAGE_LIMIT = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
]


class TlsSettings(BaseSettings):
    """Certificate settings every service shares (the subclass sets the env prefix)."""

    tls_cert: Path | None = Field(None, description="this service's certificate (PEM)")
    tls_key: Path | None = Field(None, description="this service's private key (PEM)")
    tls_ca: Path | None = Field(None, description="the consortium CA certificate (PEM)")
    insecure: bool = Field(False, description="plaintext gRPC, local development only")

    @model_validator(mode="after")
    def _certificates_or_insecure(self) -> TlsSettings:
        missing = [name for name in ("tls_cert", "tls_key", "tls_ca") if getattr(self, name) is None]
        if missing and not self.insecure:
            raise ValueError(f"mTLS needs {', '.join(missing)}; set them, or set insecure=true for local "
                             "development only")
        return self

    def warn_if_insecure(self, service: str) -> None:
        if self.insecure:
            log.warning("!!! %s runs PLAINTEXT gRPC (insecure=true): no authentication, no encryption in transit. "
                        "Local development only. !!!", service)


def _read(path: Path | None) -> bytes:
    assert path is not None
    return path.read_bytes()


def add_port(server: grpc.Server, address: str, tls: TlsSettings) -> None:
    if tls.insecure:
        server.add_insecure_port(address)
        return
    credentials = grpc.ssl_server_credentials([(_read(tls.tls_key), _read(tls.tls_cert))],
                                              root_certificates=_read(tls.tls_ca), require_client_auth=True)
    server.add_secure_port(address, credentials)


def channel(address: str, tls: TlsSettings, server_name: str) -> grpc.Channel:
    if tls.insecure:
        return grpc.insecure_channel(address, options=GRPC_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(tls.tls_ca), private_key=_read(tls.tls_key),
                                               certificate_chain=_read(tls.tls_cert))
    return grpc.secure_channel(address, credentials,
                               options=[*GRPC_OPTIONS, ("grpc.ssl_target_name_override", server_name)])


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the client certificate the TLS handshake verified; None without TLS."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None
