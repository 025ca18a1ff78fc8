"""The named workloads of the comparison: each one's generator config, its --quick variant and its pod sizing."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bench.workload import KIND_DOCS, WorkloadConfig

#: The short phases of ``--quick`` (~12 s of traffic per router), shared by every workload unless it overrides them.
QUICK_PHASES: Mapping[str, float] = {"warmup_s": 2.0, "steady_s": 2.5, "hot_s": 2.5, "restart_s": 5.0}


@dataclasses.dataclass(frozen=True, slots=True)
class Preset:
    """One named workload: how requests are generated and how big the simulated pods are for it.

    ``kv_blocks`` (16-token blocks per pod) is chosen so the KV cache is the constraint: the pool cannot keep every
    prefix of the workload on every pod, so where a router sends a request decides whether it hits.
    """

    name: str
    what: str
    config: WorkloadConfig
    #: Field overrides of ``config`` for ``--quick``.
    quick: Mapping[str, Any]
    kv_blocks: int
    max_model_len: int

    def workload(self, *, quick: bool, seed: int, pods: int, overrides: Mapping[str, Any]) -> WorkloadConfig:
        """The generator config of one run: the preset, its quick variant if asked, then the command line's values."""
        cfg = dataclasses.replace(self.config, seed=seed, pods=pods)
        if quick:
            cfg = dataclasses.replace(cfg, **{**QUICK_PHASES, **self.quick})
        return dataclasses.replace(cfg, **overrides)


_CHAT = WorkloadConfig()  # 8 Zipf tenants, 1.5-4.5 KB system prompts, 2-8 turns, 2 sessions/s

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "chat_tenant",
            "multi-turn chat, tenant system prompts, x-tenant-id and x-session-id",
            _CHAT,
            {"session_rate": 2.0, "think_s": 0.6},
            # 16k tokens per pod: the 8 system prompts (~6k tokens) and the live histories of ~25 sessions
            kv_blocks=1024,
            max_model_len=4096,
        ),
        Preset(
            "chat",
            "the same chat without x-tenant-id (x-session-id only)",
            dataclasses.replace(_CHAT, tenant_header=False),
            {"session_rate": 2.0, "think_s": 0.6},
            kv_blocks=1024,
            max_model_len=4096,
        ),
        Preset(
            "agentic",
            "long agent loops: tenant system prompt, a task, then tool outputs of 2-8 KB and short replies",
            dataclasses.replace(
                _CHAT,
                session_rate=0.5,
                turns=(16, 48),
                think_s=0.2,
                user_message_bytes=(256, 1024),
                tool_output_bytes=(2048, 8192),
                reply_bytes=(64, 256),
                max_prompt_tokens=30_000,
            ),
            {"session_rate": 0.5, "warmup_s": 2.0, "steady_s": 3.0, "hot_s": 3.0, "restart_s": 6.0},
            # 48k tokens per pod: one or two grown sessions (up to 30k tokens each) fit, not the pool's dozen
            kv_blocks=3072,
            max_model_len=32_768,
        ),
        Preset(
            "docs",
            "single-turn questions over 32 Zipf-popular 4-24 KB documents, a fresh x-session-id each",
            dataclasses.replace(
                _CHAT,
                kind=KIND_DOCS,
                tenant_header=False,
                documents=32,
                document_bytes=(4096, 24576),
                user_message_bytes=(64, 256),
                reply_bytes=(32, 128),
                session_rate=6.0,
            ),
            {"session_rate": 6.0},
            # 24k tokens per pod (~7 documents); the 32 documents hold ~110k tokens, the pool 96k
            kv_blocks=1536,
            max_model_len=8192,
        ),
    )
}

ALL_WORKLOADS: tuple[str, ...] = tuple(PRESETS)


def select(spec: str) -> tuple[str, ...]:
    """Workload names from ``--workload``: a comma-separated list or ``all``."""
    names = ALL_WORKLOADS if spec.strip() == "all" else tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise ValueError(f"unknown workload(s) {unknown or spec!r}; choose from {', '.join(ALL_WORKLOADS)} or all")
    return names
