"""Every router knob, named, with its default and its meaning; the router's settings (flags, variables, YAML) are
generated from this table (axon_router/settings.py)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
from typing import Any

from sharder.prefix import KV_BLOCK_TOKENS, TEXT_BYTES_PER_TOKEN
from sharder.server_settings import parse_bool

__all__ = ["KEY_LAYOUTS", "Knobs", "knob_docs", "parse_bool"]

#: Values of the ``key_layout`` knob.
KEY_LAYOUTS = ("grouped", "flat")


@dataclasses.dataclass(slots=True)
class Knobs:
    """Router tuning. Each field is a ``--knob-name`` flag (underscores become dashes)."""

    # --- pod view: load and cache polling ------------------------------------------------------
    load_poll_interval_s: float = 0.25
    """How often each pod's Runtime.GetLoad is polled (engine load)."""
    cache_poll_interval_s: float = 1.0
    """How often the poll asks for the cache summary too (prefix hashes the pod holds)."""
    load_poll_timeout_s: float = 1.0
    """Timeout of one GetLoad call."""
    report_stale_s: float = 3.0
    """A load report older than this is ignored; only the router's own in-flight accounting counts."""
    prefix_memory_s: float = 60.0
    """How long the router remembers that it sent a prefix chunk to a pod (recent-routing memory)."""
    prefix_memory_trust_s: float = 5.0
    """A chunk the router sent to a pod more than this long before the pod's latest cache summary was asked for,
    and missing from that summary, is not held (the pod evicted it, or restarted): the memory bridges only the
    time until the pod reports what it was sent (a few cache polls) and does not outrank the report. 0: off, the
    memory outranks the summary for all of ``prefix_memory_s``."""
    prefix_memory_max: int = 8192
    """Prefix chunks remembered per pod (oldest forgotten first)."""
    max_prefix_chunks: int = 2048
    """Prompt chunks hashed per request for the hit estimate (bounds the per-request hashing cost)."""

    # --- cost model: estimated TTFT ------------------------------------------------------------
    bytes_per_token: float = float(TEXT_BYTES_PER_TOKEN)
    """Prompt bytes per token when estimating token counts without a tokenizer."""
    prefill_tokens_per_s: float = 20000.0
    """Prefill throughput assumed per pod (tokens/s): converts prompt tokens to compute to seconds."""
    prefill_chunk_tokens: int = 8192
    """Tokens an engine step prefills at most (vLLM's max_num_batched_tokens): a prefill of N tokens ahead
    and of the request's own takes about N / this many engine steps."""
    step_s: float = 0.006
    """Fixed time of one engine step (scheduling, sampling, kernel launches)."""
    decode_seq_s: float = 0.00006
    """Added time of one engine step per running request (continuous batching: a decode costs every step a
    little, it does not queue a new request behind it)."""
    context_token_s: float = 4e-8
    """Added time of one engine step per context token of the running requests (attention reads)."""
    miss_weight: float = 1.0
    """The pick ranks pods by estimated TTFT plus this times the prefill the request would add there (its uncached
    prompt tokens / ``prefill_tokens_per_s``): a prefill delays every request queued behind it and copies a prefix
    a second pod already holds, so waiting briefly behind the holder of a long document (even behind that
    document's own first prefill) beats computing it again elsewhere. 0: estimated TTFT alone."""
    kv_usage_knee: float = 0.8
    """KV cache usage above which a pod is penalized (it starts evicting prefixes and preempting)."""
    kv_usage_penalty_s: float = 0.05
    """Added cost at 100% KV cache usage, rising linearly from 0 at ``kv_usage_knee``."""
    default_max_tokens: int = 128
    """Output tokens assumed for the accounting of a request that does not set max_tokens."""
    tie_epsilon_s: float = 0.0001
    """Costs within this of the best are a tie, broken by a stable hash of (key, pod)."""

    # --- routing keys and the pick inside the subset ---------------------------------------------------
    key_layout: str = "grouped"
    """SliceKey layout: "grouped" (the group, i.e. the x-tenant-id tenant or else a hash of the prompt's leading
    chunks, in the high 32 bits and the session id in the low 32, so a group's sessions share one contiguous
    range) or "flat" (the session / user / tenant id hashed whole, as before; for ablation)."""
    group_prefix_chunks: int = 16
    """Leading 64-byte chunks hashed into the group of a request that names no tenant (for chat, of the system
    message(s) plus the first user message, so every turn of a session gets the same group). Longer than a
    preamble shared by all tenants, or it would merge every tenant into one group."""
    load_cap: float = 1.25
    """Bounded-load cap inside the subset: no pod takes a new session at or above ceil(load_cap x (the subset's
    outstanding requests + 1) / its size) while another subset pod is under it (0: off)."""
    cap_escape_s: float = 0.1
    """A new request may go over the load cap to the subset pod holding the longest prefix of its prompt when
    that saves more than this much prefill time over the best pod under the cap (a long shared document is
    worth a little imbalance; a tenant's short system prompt is not), and its rank (estimated TTFT plus the
    prefill the request adds there) is no worse than that pod's, within one engine step (``step_s``); after a
    ``capped`` or a ``balance`` pick. 0: never (the cap is strict)."""
    cap_escape_requests: int = 1
    """How far over the load cap the cap's escape reaches: the holder of the longest prefix takes the request only
    while its outstanding requests + 1 stay within the cap + this many. Bounds the imbalance one popular document
    makes: past it the document's next request goes to a pod under the cap, which then holds it too."""
    sticky: bool = True
    """A session stays on the subset pod holding its cache unless that pod's estimated TTFT exceeds the best
    by more than the uncached prefill it would save (false: the lowest estimated TTFT always wins)."""
    fleet_cap: float = 1.25
    """Bounded load across the fleet: a new session whose subset pods are all above ceil(fleet_cap x (every
    eligible pod's outstanding requests + 1) / pods) + ``fleet_cap_slack`` goes to the best pod outside the subset
    under that cap (the overflow tier; the held tier keeps it there for its later turns). 0: off (the subset
    only). Rounded up and with the slack, at four pods a subset pod reaches 21 requests beside an idle pod before
    a session leaves (``fleet_gap`` changes that)."""
    fleet_cap_slack: int = 1
    """Requests of slack over the fleet-wide cap before a new session overflows: at low load (a mean under one
    request) the cap alone is 1, and every second request would leave its subset's warm prompt."""
    fleet_gap: int = 0
    """0 (default): the overflow tier as ``fleet_cap`` says. >= 1: a new session overflows when its subset's mean
    outstanding requests + 1 are above fleet_cap x the fleet's mean (every eligible pod's outstanding requests + 1,
    over the pods; not rounded, no slack), to the pods outside with at least this many fewer requests than every
    subset pod: at 1, a hot group's subset at one request a pod beside an idle pod is enough. Off by default: on
    the bench (stop 18, ``bench/README.md``) it lowered a hot tenant's in-flight max/mean (the hot phase, medians
    of three runs beside three of the default: chat_tenant 1.17 against 1.29, chat 1.18 against 1.26) and cost
    about a point of hit on the chats (85.4 against 86.5 %, 85.3 against 86.4 %): each overflowing session's first
    turn misses its tenant's prompt on the pod it overflows to."""
    balance_slack_s: float = 0.1
    """A new session (no pod holds its own cache) goes to the subset pod under the load cap with the least
    load (its recent load, ``load_halflife_s``, or the requests outstanding there now where more:
    ``axon_router.pick.balance_key``) among those whose rank (estimated TTFT plus ``miss_weight`` x the prefill
    the request adds) is within this of the best: sessions stick, so where a new one lands is what keeps pods'
    load even over time; a shared prefix worth more than this much prefill (a long document) still draws it to
    its holder. 0: the lowest rank alone. 0.1 (0.05 before stop 29): a tenant's system prompt (~0.05-0.1 s of
    prefill) no longer holds its new sessions on the pods that have it; with ``kv_pull_min_chunks`` 32 the pod
    they go to reads it instead of prefilling it (the bench, three runs each: chat_tenant's hit 86.4 -> 87.3 %,
    its hot phase within 1.15 in every run; agentic 88.5 -> 90.6 %, p99 1,107 -> 449 ms)."""
    load_halflife_s: float = 5.0
    """Halflife of a pod's recent load: requests running + waiting in its reports, averaged over time."""
    sticky_weight: float = 1.0
    """How much the sticky rule values the prefill a session's cache saves: the session stays unless its pod's
    estimated TTFT exceeds the best by more than this times that prefill (>= 1: moving a session also
    duplicates its cache on a second pod, which costs other sessions their capacity)."""
    sticky_slack_s: float = 0.05
    """The sticky rule's floor: a session stays on its pod unless another is faster by more than this, even when
    that other pod holds its cache as well (a warm-up copied it there), so sessions do not hop between equally
    warm pods on small queue differences. 0: only the prefill saved counts."""
    kv_room: float = 0.9
    """A pod whose resident sessions (those whose latest turn went there and still runs or ended within
    ``resident_window_s``) need more than this share of its KV cache is crowded: they evict each other's
    contexts every turn. It lets one session go at a time, at that session's next turn: of those at least half
    of whose prompt no other session there shares, the smallest whose leaving alone ends the crowding (else the
    largest), to the subset pod under the load cap with the lowest estimated TTFT where it fits within this
    share. Shared prefixes count once; a pod whose KV cache size is unknown is never crowded. 0: off."""
    move_needs_room: bool = False
    """The sticky rule's escape moves a session only to a faster pod with KV room for it (its prompt fits beside the
    sessions living there, within ``kv_room``); with none, the session stays on the pod holding its cache. A move
    onto a crowded pod evicts another session's cache there, which then prefills again. Needs ``kv_room``. Off by
    default (the fastest pod, crowded or not): on the agentic bench it keeps sessions on one pod (pods per session
    1.08 against 1.20 over nine runs) but leaves the busiest pods busy (in-flight max/mean 1.42 against 1.17)."""
    kv_pull_min_chunks: int = 32
    """Where pods move KV between them (a KV connector), a request picked onto a pod that holds at least this many
    fewer 64-byte chunks of its prompt than another candidate pod is sent with a hint naming that pod
    (``x-brunoise-kv-pull``): the picked pod reads the prefix from it before computing the rest, instead of
    prefilling what a peer already holds (a session moved for room or balance, a shared document's new copy, a
    tenant's system prompt on a pod a new session was balanced onto). 32 (~500 tokens; 128 before stop 29, when
    32 alone cost the chats' hot phase 0.04 in the simulator: with ``balance_slack_s`` 0.1 it evens it instead).
    0: never."""
    resident_window_s: float = 1.0
    """How long after its latest request on a pod ended a session still counts as living there (``kv_room``);
    while a request of it runs there, it does. The router cannot tell a session that ended from one between
    turns, and one that ended keeps its pod looking full for this long. 1 s from the end (stop 26; was 10 s from
    the dispatch, 30 before stop 21): an agent loop's next turn comes a think time after the last one ends
    (0.2 s on the agentic bench), while a turn itself runs for seconds under load, so a window counted from the
    dispatch both dropped sessions mid-turn and kept ended ones; in the simulator (agentic, seeds 0-143,
    paired) 1 s from the end gains 0.7 points of hit (77 seeds better, 61 worse), a median p99 TTFT of 2.4 s
    against 2.7 s and a median restart/steady hit of 0.87 against 0.86.
    Sessions that idle longer between turns than this (a person reading, an agent's slow tool call) stop
    counting meanwhile, as an LRU cache would treat them: raise it for such workloads."""
    kv_block_tokens: int = KV_BLOCK_TOKENS
    """Tokens per KV cache block (vLLM's block_size) of a pod that does not report its own with its cache summary
    (``CacheSummary.block_tokens``): converts the pod's reported KV blocks to tokens."""
    sticky_outside: bool = True
    """Stickiness reaches past the subset: a session whose cache is held only by a pod outside its subset (its
    slice moved away, or it spilled) stays on that pod by the same rule (a draining pod: for ``drain_keep_s``).
    A move then sends new sessions to the new replica and lets running ones finish where their cache is,
    instead of making every one of them pay its whole prefill again (false: stickiness only inside the
    subset)."""
    drain_keep_s: float = 5.0
    """For how long after a router sees a pod draining the held tier still sends it the sessions whose cache it
    holds (HAProxy's ``drain``: sticky sessions only, no new ones), while the assigner's warm-up copies them to
    their new replicas (``warm_deadline_s``, 5 s by default); then they go there, and the pod empties so the
    drain ends. A session whose new replica holds it already (a warm-up copied it) goes there at once. 0: a
    draining pod takes no request (the drain moves every session at once)."""

    # --- admission, spill-over, shedding ---------------------------------------------------------
    admit_max_outstanding: int = 64
    """A pod with this many requests running + waiting (report + own since) is over its admission limit."""
    admit_ttft_slo_s: float = 5.0
    """A pod whose predicted TTFT for the request is over this is over its admission limit."""
    batch_admit_fraction: float = 0.5
    """Batch requests see limits scaled by this fraction, so they spill and shed before interactive ones."""
    retry_after_s: float = 1.0
    """Retry hint sent with a shed (Retry-After / retry-after metadata)."""

    # --- failover --------------------------------------------------------------------------------
    health_interval_s: float = 1.0
    """How often each pod's HTTP /health is polled."""
    health_timeout_s: float = 0.5
    """Timeout of one health check; a timeout counts as a failed check."""
    unhealthy_after: int = 1
    """Consecutive failed health checks before a pod is skipped."""
    healthy_after: int = 1
    """Consecutive passed health checks before a skipped pod takes traffic again."""
    outlier_consecutive_failures: int = 3
    """Consecutive failed requests (connect errors, 5xx) that eject a pod (open its circuit)."""
    breaker_open_s: float = 2.0
    """How long an opened circuit stays open before one half-open probe request is let through."""
    breaker_max_open_s: float = 30.0
    """Cap of the open time, which doubles on each failed probe."""
    max_attempts: int = 3
    """Attempts per request (first try + retries), only before the first token."""
    retry_backoff_s: float = 0.01
    """Base of the jittered exponential backoff between attempts."""
    retry_backoff_max_s: float = 0.2
    """Cap of one backoff sleep."""
    connect_timeout_s: float = 2.0
    """TCP connect timeout to a pod."""
    first_token_timeout_s: float = 120.0
    """Per attempt: no response/first token from the pod within this (or the deadline) fails the attempt."""
    default_timeout_s: float = 600.0
    """Overall deadline of a request that sets none."""
    stream_idle_timeout_s: float = 30.0
    """Once a pod has started answering: the longest silence between two reads of its response; a pod silent for
    longer is stalled (SSE error event mid-stream, 504 before any output), so it cannot hold a request for long."""
    pool_max_connections: int = 1024
    """Connections the router keeps open to all pods together (0 = no limit); beyond it a request waits for one."""
    pool_max_per_pod: int = 256
    """Connections the router keeps open to one pod (0 = no limit): a stalled pod cannot take every socket."""

    # --- front ends ------------------------------------------------------------------------------
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest accepted HTTP request body (413 above)."""
    header_read_timeout_s: float = 10.0
    """A client must send a request's complete headers within this of starting it (slowloris: the connection
    is closed with a 408)."""
    body_read_timeout_s: float = 30.0
    """A client must send a request's complete body within this of its headers (408 after)."""
    max_key_bytes: int = 512
    """Longest accepted routing key / request id / label value (400 above)."""
    routing_prefix_chunks: int = 4
    """Prefix chunks hashed into the routing key of a request that names no key."""
    trace_sample_ratio: float = 1.0
    """Fraction of requests (without a sampled incoming traceparent) whose spans are recorded."""
    clerk_refresh_s: float = 0.1
    """How often the router checks the clerk for new generations and rebuilds its candidate lists."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def as_dict(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.field_names()}

    def validate(self) -> Knobs:
        """Raise ValueError naming the knob unless every value is usable; return self."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int | float) and v < 0:
                raise ValueError(f"knob {f.name} must be >= 0, got {v}")
        for name in ("max_attempts", "prefix_memory_max", "max_body_bytes", "admit_max_outstanding"):
            if getattr(self, name) < 1:
                raise ValueError(f"knob {name} must be >= 1, got {getattr(self, name)}")
        if self.prefill_chunk_tokens < 1:
            raise ValueError(f"knob prefill_chunk_tokens must be >= 1, got {self.prefill_chunk_tokens}")
        if not 0 <= self.kv_usage_knee < 1:
            raise ValueError(f"knob kv_usage_knee must be in [0, 1), got {self.kv_usage_knee}")
        if not 0 < self.batch_admit_fraction <= 1:
            raise ValueError(f"knob batch_admit_fraction must be in (0, 1], got {self.batch_admit_fraction}")
        if self.key_layout not in KEY_LAYOUTS:
            raise ValueError(f"knob key_layout must be one of {', '.join(KEY_LAYOUTS)}, got {self.key_layout!r}")
        if self.group_prefix_chunks < 1:
            raise ValueError(f"knob group_prefix_chunks must be >= 1, got {self.group_prefix_chunks}")
        if self.cap_escape_s < 0:
            raise ValueError(f"knob cap_escape_s must be >= 0, got {self.cap_escape_s}")
        if self.fleet_gap < 0:
            raise ValueError(f"knob fleet_gap must be >= 0 (0: the rounded fleet cap), got {self.fleet_gap}")
        if self.cap_escape_requests < 0:
            raise ValueError(f"knob cap_escape_requests must be >= 0, got {self.cap_escape_requests}")
        if self.kv_room > 1:
            raise ValueError(f"knob kv_room must be in [0, 1] (a share of the KV cache; 0: off), got {self.kv_room}")
        if self.kv_block_tokens < 1:
            raise ValueError(f"knob kv_block_tokens must be >= 1, got {self.kv_block_tokens}")
        if 0 < self.load_cap < 1:
            raise ValueError(f"knob load_cap must be 0 (off) or >= 1, got {self.load_cap}")
        for name in ("stream_idle_timeout_s", "header_read_timeout_s", "body_read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"knob {name} must be > 0, got {getattr(self, name)}")
        if self.prefill_tokens_per_s <= 0 or self.bytes_per_token <= 0:
            raise ValueError("knobs prefill_tokens_per_s and bytes_per_token must be > 0")
        return self


def knob_docs() -> dict[str, str]:
    """Each knob's docstring (the string literal under its field in ``Knobs``), read from the source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(Knobs)))
    except (OSError, TypeError):  # no source (e.g. a frozen build): flags keep their defaults only
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for field, doc in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs
