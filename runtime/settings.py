"""The runtime's settings, declared once: flags, ``BRUNOISE_RUNTIME_*`` variables and a YAML file (``--config``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from runtime.engines.sim import DEFAULT_MODEL, SimConfig
from runtime.http_api import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from sharder.security.client import ClientAuthSettings
from sharder.server_settings import ServerSettings, build_parser, group, parse_settings

ENV_PREFIX = "BRUNOISE_RUNTIME_"
_SIM = SimConfig()
_SIM_GROUP = group("simulated engine")


def _kv_pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{what} must be KEY=VALUE[,KEY=VALUE...], got {part!r}")
        out[k.strip()] = v.strip()
    return out


class RuntimeSettings(ServerSettings, ClientAuthSettings):
    """Every knob of ``brunoise-runtime``. Precedence: flag, then environment variable (``BRUNOISE_RUNTIME_`` + the
    name in capitals; lists and mappings as JSON), then the YAML file, then the default here."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", populate_by_name=True)

    engine: Literal["sim", "vllm"] = Field("sim", description="inference engine")
    engine_arg: list[str] = Field(
        default_factory=list, description="vLLM adapter option KEY=VALUE (repeatable), see "
        "runtime.engines.vllm.config_from_args, e.g. base_url=URL", json_schema_extra={"metavar": "KEY=VALUE"},
    )  # fmt: skip
    pod_id: str | None = Field(None, description="pod id (default: runtime-<host>-<pid>)")
    target: str = Field("", description="the target this pod serves")
    model: str | None = Field(None, description=f"served model name (sim default: {DEFAULT_MODEL})")
    labels: dict[str, str] = Field(default_factory=dict, description="pod labels k=v,... (model is added if absent)")
    http_host: str = Field("127.0.0.1", description="HTTP bind host")
    http_port: int = Field(0, description="HTTP port (0: any free port)")
    grpc_host: str = Field("127.0.0.1", description="gRPC bind host")
    grpc_port: int = Field(0, description="gRPC port (0: any free port)")
    assigner: list[str] = Field(default_factory=list, description="assigner address (repeatable)",
                                json_schema_extra={"metavar": "HOST:PORT"})  # fmt: skip
    report_interval: float = Field(1.0, gt=0, description="slicelet load-report interval, seconds")
    lease_ttl: float = Field(5.0, gt=0, description="slicelet lease TTL, seconds")
    warm_timeout_s: float = Field(
        5.0, gt=0, description="a slice this pod gains is warmed (a donor's hottest prompts prefilled) for at most this long"
    )
    peer_credentials: str | None = Field(
        None, description="the credentials file (as the assigner's): only pod tokens may then read prompts over "
        "HotPrompts", json_schema_extra={"metavar": "FILE"},
    )  # fmt: skip
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0, description="HTTP request body limit")
    header_timeout_s: float = Field(
        DEFAULT_HEADER_TIMEOUT_S, gt=0,
        description="a request's headers must arrive within this (slowloris: 408 and the connection is closed)",
    )  # fmt: skip
    body_timeout_s: float = Field(DEFAULT_BODY_TIMEOUT_S, gt=0,
                                  description="a request's body must arrive within this of its headers (408)")  # fmt: skip
    ready_file: str | None = Field(None, description="write bound addresses (JSON) here once serving")
    advertise_host: str | None = Field(
        None, description="host named in reports and the ready file (default: the bind host when concrete, else the "
        "primary address)",
    )  # fmt: skip
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM: readiness fails, the assigner drains the pod, requests in flight get "
        "this long; exit 0",
    )  # fmt: skip
    log_level: str | None = Field(None, description="log level (default: $BRUNOISE_LOG_LEVEL, else INFO)")
    time_scale: float = Field(_SIM.time_scale, description="simulated time runs this many times faster",
                              json_schema_extra=_SIM_GROUP)  # fmt: skip
    kv_blocks: int = Field(_SIM.kv_blocks, description="KV blocks of 16 tokens", json_schema_extra=_SIM_GROUP)
    max_model_len: int = Field(_SIM.max_model_len, description="longest prompt + output, tokens",
                               json_schema_extra=_SIM_GROUP)  # fmt: skip
    max_num_seqs: int = Field(_SIM.max_num_seqs, description="requests running at once (vLLM's max_num_seqs)",
                              json_schema_extra=_SIM_GROUP)  # fmt: skip
    max_num_batched_tokens: int = Field(_SIM.max_num_batched_tokens, description="tokens one engine step schedules",
                                        json_schema_extra=_SIM_GROUP)  # fmt: skip
    step_fixed_s: float = Field(_SIM.step_fixed_s, description="fixed time of one engine step, seconds",
                                json_schema_extra=_SIM_GROUP)  # fmt: skip
    per_prefill_token_s: float = Field(_SIM.per_prefill_token_s, description="step time per prefilled token",
                                       json_schema_extra=_SIM_GROUP)  # fmt: skip
    per_decode_seq_s: float = Field(_SIM.per_decode_seq_s, description="step time per decoding request",
                                    json_schema_extra=_SIM_GROUP)  # fmt: skip
    per_context_token_s: float = Field(_SIM.per_context_token_s, description="step time per context token",
                                       json_schema_extra=_SIM_GROUP)  # fmt: skip
    eos_probability: float = Field(_SIM.eos_probability, description="chance per token of ending with EOS",
                                   json_schema_extra=_SIM_GROUP)  # fmt: skip
    capacity: float = Field(_SIM.capacity, description="relative capacity reported in the load",
                            json_schema_extra=_SIM_GROUP)  # fmt: skip
    seed: int = Field(_SIM.seed, description="mixed into every request's random seed", json_schema_extra=_SIM_GROUP)
    startup_s: float = Field(_SIM.startup_s, description="simulated start-up time before ready",
                             json_schema_extra=_SIM_GROUP)  # fmt: skip
    kv_transfer_gb_per_s: float = Field(
        _SIM.kv_transfer_gb_per_s, ge=0, description="a KV connector (vLLM's NixlConnector) reading peers' KV at this "
        "many GB/s; warm-ups then read a donor's KV instead of prefilling it (0: none)", json_schema_extra=_SIM_GROUP,
    )  # fmt: skip
    kv_events_endpoint: str | None = Field(None, description="ZMQ endpoint for KV events (vLLM wire format)",
                                           json_schema_extra=_SIM_GROUP)  # fmt: skip
    fault_marker: str | None = Field(
        None, description="TEST HOOK: a prompt containing this text crashes or hangs the engine (--fault-mode); "
        "off unless given", json_schema_extra=_SIM_GROUP,
    )  # fmt: skip
    fault_mode: Literal["crash", "hang", "error"] = Field(
        "crash", description="what --fault-marker does: exit the process, hang the step loop, or fail that request "
        "(500)", json_schema_extra=_SIM_GROUP,
    )  # fmt: skip

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_text(cls, v: Any) -> Any:
        return _kv_pairs(v, "--labels") if isinstance(v, str) else v

    @field_validator("engine_arg")
    @classmethod
    def _engine_args(cls, v: list[str]) -> list[str]:
        for text in v:
            k, sep, _ = text.partition("=")
            if not sep or not k:
                raise ValueError(f"--engine-arg must be KEY=VALUE, got {text!r}")
        return v

    def engine_options(self) -> dict[str, str]:
        """``--engine-arg`` as a mapping (a later KEY wins)."""
        return dict(text.partition("=")[::2] for text in self.engine_arg)


def runtime_parser() -> argparse.ArgumentParser:
    """``brunoise-runtime``'s flags, generated from ``RuntimeSettings``."""
    return build_parser(RuntimeSettings, "brunoise-runtime",
                        "brunoise-runtime: one runtime pod (simulated or vLLM engine) serving HTTP + gRPC.")  # fmt: skip


def parse_runtime_settings(argv: Sequence[str] | None = None) -> RuntimeSettings:
    """Resolve every runtime setting (flag > env > YAML > default); bad values exit naming them."""
    p = runtime_parser()
    settings = parse_settings(RuntimeSettings, p, argv)
    if settings.assigner and not settings.target:
        p.error("--assigner needs --target (the target this pod registers for)")
    return settings
