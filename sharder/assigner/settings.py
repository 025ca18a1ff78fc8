"""The assigner's settings, declared once: flags, ``BRUNOISE_ASSIGNER_*`` variables and a YAML file (``--config``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from sharder.server_settings import ServerSettings, build_parser, group, parse_settings

ENV_PREFIX = "BRUNOISE_ASSIGNER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


class AssignerSettings(ServerSettings):
    """Every knob of ``brunoise-assigner``. Precedence: flag, then environment variable (``BRUNOISE_ASSIGNER_`` +
    the name in capitals; lists as JSON), then the YAML file, then the default here."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", populate_by_name=True)

    store: Literal["embedded", "etcd"] = Field("embedded", description="store backend")
    etcd_endpoint: list[str] = Field(default_factory=list, description="etcd member HOST:PORT (repeatable)")
    etcd_prefix: str = Field("/brunoise/", description="key prefix in etcd")
    snapshot: str | None = Field(None, description="snapshot file of the embedded store")
    id: str | None = Field(None, description="this replica's id (default: host-pid-random)")
    host: str = Field("127.0.0.1", description="address to bind (and advertise to the other replicas)")
    advertise_host: str | None = Field(
        None, description="host named in leader hints and the ready file (default: --host when concrete, else the "
        "primary address)",
    )  # fmt: skip
    port: int = Field(0, description="gRPC port (0: any free port)")
    round_interval: float = Field(2.0, gt=0, description="seconds between policy rounds")
    rollout_interval: float = Field(1.0, gt=0, description="seconds between the leader's rollout passes (SLO, steps)")
    lease_ttl: float = Field(5.0, gt=0, description="leader lease and default pod lease TTL, seconds")
    report_interval: float = Field(1.0, gt=0, description="report interval told to pods, seconds")
    metrics_port: int | None = Field(
        None, description="serve Prometheus /metrics and /ready on this HTTP port of --host (0: any free port; default: off)"
    )
    policy: str = Field("sharder.policy:reshard", description="", json_schema_extra={"hidden": True})
    ready_file: str | None = Field(None, description="write bound addresses here once serving")
    log_level: str | None = Field(None, description="log level (default: $BRUNOISE_LOG_LEVEL, else INFO)")
    credentials: str | None = Field(
        None, validation_alias=AliasChoices(ENV_PREFIX + "CREDENTIALS", "BRUNOISE_CREDENTIALS"),
        description="tokens file (sha256 digests by role); every Assigner RPC then needs a bearer token "
        "(also $BRUNOISE_CREDENTIALS)", json_schema_extra=group("security"),
    )  # fmt: skip
    tls_cert: str | None = Field(None, description="server certificate chain, PEM (enables TLS)",
                                 json_schema_extra=group("security"))  # fmt: skip
    tls_key: str | None = Field(None, description="server private key, PEM", json_schema_extra=group("security"))
    insecure: bool = Field(False, description="allow binding a non-loopback address without credentials and TLS",
                           json_schema_extra=group("security"))  # fmt: skip
    etcd_ca: str | None = Field(None, description="CA certificate of the etcd members (TLS)",
                                json_schema_extra=group("security"))  # fmt: skip
    etcd_cert: str | None = Field(None, description="client certificate for etcd (mTLS)",
                                  json_schema_extra=group("security"))  # fmt: skip
    etcd_key: str | None = Field(None, description="client key for etcd (mTLS)", json_schema_extra=group("security"))
    etcd_user: str | None = Field(None, description="etcd user (etcd auth); password from $BRUNOISE_ETCD_PASSWORD",
                                  json_schema_extra=group("security"))  # fmt: skip
    target: list[str] = Field(
        default_factory=list, json_schema_extra=group("targets"),
        description="a target to serve, NAME[=MODEL] (repeatable); created with the default config when missing",
    )  # fmt: skip
    targets_file: str | None = Field(None, json_schema_extra=group("targets"),
                                     description='JSON list of target configs ([{"target": "chat", "model": "m", ...}])')  # fmt: skip
    targets_from_reports: bool = Field(
        False, json_schema_extra=group("targets"),
        description="create a target when a pod first reports for it (development and tests only: refused with "
        "--credentials or a non-loopback --host; targets otherwise come from configuration or an admin's "
        "ConfigureTarget)",
    )  # fmt: skip


def assigner_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """``brunoise-assigner``'s flags, generated from ``AssignerSettings``."""
    return build_parser(AssignerSettings, prog, description)


def parse_assigner_settings(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> AssignerSettings:
    """Parse ``argv`` and resolve every assigner setting; a bad value exits through ``p.error`` naming it."""
    return parse_settings(AssignerSettings, p, argv)
