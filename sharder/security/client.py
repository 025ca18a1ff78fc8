"""What a client of the assigner presents: a bearer token and the CA it trusts (from flags or the environment)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from pydantic import BaseModel, Field

ENV_TOKEN = "BRUNOISE_TOKEN"
ENV_TOKEN_FILE = "BRUNOISE_TOKEN_FILE"
ENV_TLS_CA = "BRUNOISE_TLS_CA"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientAuth:
    """A bearer token (sent as ``authorization: Bearer ...`` on every call) and the CA certificate (PEM) the
    channel verifies the assigner with; no CA means a plaintext channel (an open loopback assigner)."""

    token: str | None = None
    ca_pem: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientAuth:
        """$BRUNOISE_TOKEN (or the file named by $BRUNOISE_TOKEN_FILE) and $BRUNOISE_TLS_CA (a PEM path)."""
        e = os.environ if env is None else env
        return cls.from_values(e.get(ENV_TOKEN) or None, e.get(ENV_TOKEN_FILE) or None, e.get(ENV_TLS_CA) or None)

    @classmethod
    def from_values(cls, token: str | None, token_file: str | None, ca_path: str | None) -> ClientAuth:
        if token is None and token_file:
            token = pathlib.Path(token_file).read_text().strip() or None
        ca = pathlib.Path(ca_path).read_bytes() if ca_path else None
        return cls(token=token, ca_pem=ca)

    @classmethod
    def from_args(cls, ns: object, env: Mapping[str, str] | None = None) -> ClientAuth:
        """``--token-file`` / ``--tls-ca`` (``ClientAuthSettings`` fields of ``ns``), each falling back to the environment
        ($BRUNOISE_TOKEN or $BRUNOISE_TOKEN_FILE, $BRUNOISE_TLS_CA) when not given."""
        e = os.environ if env is None else env
        token_file: str | None = getattr(ns, "token_file", None)
        ca: str | None = getattr(ns, "tls_ca", None)
        token = None if token_file else e.get(ENV_TOKEN) or None
        return cls.from_values(token, token_file or e.get(ENV_TOKEN_FILE) or None, ca or e.get(ENV_TLS_CA) or None)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def aio_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        if self.ca_pem is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
            return grpc.aio.secure_channel(address, creds, options=list(options))
        return grpc.aio.insecure_channel(address, options=list(options))

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        if self.ca_pem is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
            return grpc.secure_channel(address, creds, options=list(options))
        return grpc.insecure_channel(address, options=list(options))


class ClientAuthSettings(BaseModel):
    """The settings of a process that calls the assigner (a mixin of its settings model): its bearer token (a file,
    never argv) and the CA; ``ClientAuth.from_args`` reads them."""

    token_file: str | None = Field(
        None, description=f"bearer token presented to the assigner (default: ${ENV_TOKEN} or ${ENV_TOKEN_FILE})",
        json_schema_extra={"group": "assigner credentials", "metavar": "PATH"},
    )  # fmt: skip
    tls_ca: str | None = Field(
        None, description=f"CA certificate the assigner's TLS certificate is checked with (default: ${ENV_TLS_CA}; "
        "neither: plaintext)", json_schema_extra={"group": "assigner credentials", "metavar": "PEM"},
    )  # fmt: skip
