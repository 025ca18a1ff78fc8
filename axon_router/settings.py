"""The router's settings, declared once: flags, ``BRUNOISE_ROUTER_*`` variables and a YAML file (``--config``)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from pydantic import Field, create_model
from pydantic_settings import SettingsConfigDict

from axon_router.knobs import Knobs, knob_docs
from sharder.security.client import ClientAuthSettings
from sharder.server_settings import ServerSettings, build_parser, group, parse_settings

ENV_PREFIX = "BRUNOISE_ROUTER_"


class RouterServerSettings(ServerSettings, ClientAuthSettings):
    """The process settings of ``brunoise-router``; ``RouterSettings`` adds one field per router knob."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", populate_by_name=True)

    assigner: list[str] = Field(default_factory=list, description="assigner gRPC address (repeatable; required)")
    host: str = Field("127.0.0.1", description="bind host (0.0.0.0: every interface)")
    advertise_host: str | None = Field(
        None, description="host named in the ready file (default: --host when concrete, else this host's primary "
        "address)",
    )  # fmt: skip
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM: readiness fails, new connections are refused, open requests and "
        "streams get this long",
    )  # fmt: skip
    http_port: int = Field(8000, description="OpenAI-compatible HTTP port (0: any free port)")
    grpc_port: int = Field(50061, description="gRPC port (0: any free port)")
    ready_file: str | None = Field(None, description='write {"http": URL, "grpc": ADDR} here once serving')
    wait_ready_s: float = Field(0.0, ge=0, description="wait up to this long for the first assignment before serving")
    workers: int = Field(
        1, ge=1, description="router processes sharing --http-port and --grpc-port (SO_REUSEPORT), each with its own "
        "clerk, pod views and metrics; they pick alike for the same assignment generation and pod views",
    )  # fmt: skip
    reuse_port: bool = Field(
        False, description="internal: this process is one worker of --workers N (binds with SO_REUSEPORT)"
    )
    log_level: str | None = Field(None, description="log level (default: $BRUNOISE_LOG_LEVEL, else INFO)")
    otel_console: bool = Field(False, description="export spans to stdout")
    api_keys_file: str | None = Field(
        None, description="JSON/YAML mapping sha256 hex of each API key -> {name, tenant}; clients then send "
        "'Authorization: Bearer KEY' (gRPC: authorization metadata); a key's tenant is its requests' routing group",
        json_schema_extra=group("security"),
    )  # fmt: skip
    insecure: bool = Field(False, description="serve a non-loopback --host without API keys (refused otherwise)",
                           json_schema_extra=group("security"))  # fmt: skip
    quotas: bool = Field(
        False, description="enforce tenant quotas: draw leased allotments from the assigners (brunoise quota set); "
        "a tenant over its quota, or whose allotment is spent while the store is unreachable, gets 429 "
        "quota_exceeded", json_schema_extra=group("tenancy"),
    )  # fmt: skip
    key_quarantine: bool = Field(
        False, description="contain keys of death: a key whose requests coincide with pod crashes/hangs/timeouts "
        "stays inside its subset, and on --quarantine-pods distinct pods is refused (key_quarantined) for "
        "--quarantine-cooldown-s", json_schema_extra=group("tenancy"),
    )  # fmt: skip
    quarantine_pods: int = Field(2, description="distinct pods whose faults quarantine a key",
                                 json_schema_extra=group("tenancy"))  # fmt: skip
    quarantine_window_s: float = Field(120.0, description="how long a key stays suspected",
                                       json_schema_extra=group("tenancy"))  # fmt: skip
    quarantine_cooldown_s: float = Field(300.0, description="how long a quarantine lasts",
                                         json_schema_extra=group("tenancy"))  # fmt: skip
    region: str = Field("", description="this router's region: tenants without a home region go to its regional "
                        "targets first; requests sent elsewhere count in brunoise_router_cross_region_requests_total",
                        json_schema_extra=group("tenancy"))  # fmt: skip
    placement_refresh_s: float = Field(1.0, gt=0, description="how often tenant placements (brunoise tenant "
                                       "set-region) are read from the assigners",
                                       json_schema_extra=group("tenancy"))  # fmt: skip


def _knob_fields() -> dict[str, Any]:
    """One settings field per ``Knobs`` field: its type, default and docstring (bool knobs take true/false)."""
    docs = knob_docs()
    defaults = Knobs()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Knobs):
        default = getattr(defaults, f.name)
        typ = type(default)
        extra = group("knobs", metavar=typ.__name__.upper(), takes_value=typ is bool)
        out[f.name] = (typ, Field(default, description=docs.get(f.name, ""), json_schema_extra=extra))
    return out


#: Every setting of ``brunoise-router``: the process settings above plus the knob table of axon_router/knobs.py.
RouterSettings: type[RouterServerSettings] = create_model(
    "RouterSettings", __base__=RouterServerSettings, __doc__=RouterServerSettings.__doc__, **_knob_fields()
)


def router_parser() -> argparse.ArgumentParser:
    """``brunoise-router``'s flags, generated from ``RouterSettings``."""
    return build_parser(RouterSettings, "brunoise-router", "brunoise-router: one router process serving gRPC and "
                        "OpenAI-compatible HTTP over the clerk's assignment.")  # fmt: skip


def knobs_of(settings: RouterServerSettings) -> Knobs:
    """The router knobs the settings carry, validated (ValueError names a bad knob)."""
    return Knobs(**{n: getattr(settings, n) for n in Knobs.field_names()}).validate()


def parse_router_settings(argv: Sequence[str] | None = None) -> tuple[RouterServerSettings, Knobs]:
    """Resolve every router setting (flag > env > YAML > default) and the knobs; bad values exit naming them."""
    p = router_parser()
    settings = parse_settings(RouterSettings, p, argv)
    if not settings.assigner:
        p.error("at least one --assigner is required (or $BRUNOISE_ROUTER_ASSIGNER as a JSON list, or the file)")
    try:
        return settings, knobs_of(settings)
    except ValueError as e:
        p.error(str(e))
