"""The assigner's settings, declared once: flags, ``BRUNOISE_ASSIGNER_*`` variables and a YAML file (``--config``)."""

from __future__ import annotations

import argparse
import contextvars
import os
import pathlib
import typing
from collections.abc import Sequence
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "BRUNOISE_ASSIGNER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

#: the YAML file's values while ``AssignerSettings.load`` builds an instance (the lowest-priority source)
_FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("assigner_file", default=None)


def _group(name: str) -> dict[str, Any]:
    return {"group": name}


class AssignerSettings(BaseSettings):
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
        "(also $BRUNOISE_CREDENTIALS)", json_schema_extra=_group("security"),
    )  # fmt: skip
    tls_cert: str | None = Field(None, description="server certificate chain, PEM (enables TLS)",
                                 json_schema_extra=_group("security"))  # fmt: skip
    tls_key: str | None = Field(None, description="server private key, PEM", json_schema_extra=_group("security"))
    insecure: bool = Field(False, description="allow binding a non-loopback address without credentials and TLS",
                           json_schema_extra=_group("security"))  # fmt: skip
    etcd_ca: str | None = Field(None, description="CA certificate of the etcd members (TLS)",
                                json_schema_extra=_group("security"))  # fmt: skip
    etcd_cert: str | None = Field(None, description="client certificate for etcd (mTLS)",
                                  json_schema_extra=_group("security"))  # fmt: skip
    etcd_key: str | None = Field(None, description="client key for etcd (mTLS)", json_schema_extra=_group("security"))
    etcd_user: str | None = Field(None, description="etcd user (etcd auth); password from $BRUNOISE_ETCD_PASSWORD",
                                  json_schema_extra=_group("security"))  # fmt: skip
    target: list[str] = Field(
        default_factory=list, json_schema_extra=_group("targets"),
        description="a target to serve, NAME[=MODEL] (repeatable); created with the default config when missing",
    )  # fmt: skip
    targets_file: str | None = Field(None, json_schema_extra=_group("targets"),
                                     description='JSON list of target configs ([{"target": "chat", "model": "m", ...}])')  # fmt: skip
    targets_from_reports: bool = Field(
        False, json_schema_extra=_group("targets"),
        description="create a target when a pod first reports for it (development and tests only: refused with "
        "--credentials or a non-loopback --host; targets otherwise come from configuration or an admin's "
        "ConfigureTarget)",
    )  # fmt: skip

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=_FILE_VALUES.get() or {})

    @classmethod
    def load(cls, flags: dict[str, Any], config_file: str | None) -> AssignerSettings:
        """Flags over the environment over ``config_file`` (YAML mapping of these names) over the defaults."""
        values: dict[str, Any] = {}
        if config_file:
            doc = yaml.safe_load(pathlib.Path(config_file).read_text())
            if doc is not None and not isinstance(doc, dict):
                raise ValueError(f"{config_file}: expected a mapping of settings")
            values = {str(k).replace("-", "_"): v for k, v in (doc or {}).items()}
            unknown = sorted(set(values) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"{config_file}: unknown settings {unknown}")
        token = _FILE_VALUES.set(values)
        try:
            return cls(**flags)
        finally:
            _FILE_VALUES.reset(token)


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse front end generated from ``AssignerSettings``: one ``--flag`` per field, its description as the
    help; flags not given are absent from the result (so the environment and the file can supply them)."""
    p = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="YAML", default=None,
                   help=f"YAML file of these settings by name (also ${CONFIG_ENV}); flags and variables win")  # fmt: skip
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, info in AssignerSettings.model_fields.items():
        extra = _extra(info)
        group_name = extra.get("group")
        target: Any = p
        if isinstance(group_name, str):
            target = groups.get(group_name) or groups.setdefault(group_name, p.add_argument_group(group_name))
        flag = "--" + name.replace("_", "-")
        env = f"${ENV_PREFIX}{name.upper()}"
        help_text = argparse.SUPPRESS if extra.get("hidden") else f"{info.description} [{env}]"
        ann = info.annotation
        args = typing.get_args(ann)
        if ann is bool:
            target.add_argument(flag, action="store_true", help=help_text)
        elif typing.get_origin(ann) is list:
            target.add_argument(flag, action="append", metavar=name.upper(), help=help_text)
        elif typing.get_origin(ann) is Literal:
            target.add_argument(flag, choices=list(args), help=help_text)
        else:
            base = next((a for a in args if a is not type(None)), ann) if args else ann
            target.add_argument(flag, type=base if base in (int, float) else str, help=help_text)
    return p


def parse_settings(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[AssignerSettings, dict[str, Any]]:
    """Parse ``argv`` and resolve every setting; a bad value exits through ``p.error`` naming it."""
    ns = vars(p.parse_args(argv))
    config_file = ns.pop("config", None) or os.environ.get(CONFIG_ENV) or None
    try:
        return AssignerSettings.load(ns, config_file), ns
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        p.error(errs)
    except (OSError, ValueError) as exc:
        p.error(f"--config: {exc}")
