"""What the simulator replays: sessions of requests from a seeded bench workload or from a JSONL trace file.

Sessions are produced lazily in start order, so a fleet-size run never holds every prompt in memory. A request
keeps only what the fleet needs: its prompt's chained 64-byte chunk hashes (``sharder.prefix``, which are the
simulated engine's block hashes), token counts and the routing inputs (session id, tenant, stable prefix length).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sharder.prefix import CHUNK_BYTES, TEXT_BYTES_PER_TOKEN, prefix_hashes, render_chat, stable_chat_prefix

PHASE_DEFAULT = "steady"
#: The phase the bench's rolling restart runs in (``bench.workload.PHASE_RESTART``): pods per session leaves its turns out.
PHASE_RESTART = "restart"


@dataclasses.dataclass(slots=True)
class SimRequest:
    """One request of a session: when, what the router parses from it, and what the engine computes."""

    session: str
    turn: int
    t: float  # scheduled send time (a turn also waits for the previous one)
    phase: str
    group: int  # tenant or document rank (for reports); -1 when unknown
    tenant: str  # the x-tenant-id value, "" = none
    prompt_tokens: int  # the engine's count (4 UTF-8 bytes per token)
    est_tokens: int  # the router's estimate (bytes / bytes_per_token + 1)
    hashes: tuple[int, ...]  # chained hashes of every full 64-byte chunk of the prompt
    max_tokens: int
    stable_bytes: int | None  # chat: bytes every turn repeats (``stable_chat_prefix``); None: a completion
    key_text: str = ""  # the prompt text, kept only when the key may need it (no session id)


@dataclasses.dataclass(slots=True)
class SimSession:
    session: str
    start: float
    requests: list[SimRequest]


@dataclasses.dataclass(frozen=True, slots=True)
class PhaseSpan:
    name: str
    start: float
    end: float


@dataclasses.dataclass(frozen=True, slots=True)
class Restart:
    """Restart pod index ``pod`` at ``t`` (drain, stop, start again with an empty cache)."""

    t: float
    pod: int


class Source:
    """A replayable set of sessions: ``sessions()`` in start order, the phases, the restart schedule."""

    name: str = "source"
    phases: tuple[PhaseSpan, ...] = ()
    restarts: tuple[Restart, ...] = ()
    duration_s: float = 0.0

    def sessions(self) -> Iterator[SimSession]:
        raise NotImplementedError

    def phase_at(self, t: float) -> str:
        """The phase a request sent at ``t`` counts in, as ``bench/compare.py`` counts it: the one it was sent in,
        not the one its session planned it in (a session behind its schedule sends late turns); before the first
        phase, the first; with no phases, ``PHASE_DEFAULT``."""
        spans = self.phases
        if not spans:
            return PHASE_DEFAULT
        i = bisect.bisect_right([p.start for p in spans], t) - 1
        return spans[max(i, 0)].name


def from_messages(
    session: str, turn: int, t: float, phase: str, group: int, tenant: str,
    messages: Sequence[Mapping[str, Any]], max_tokens: int,
) -> SimRequest:  # fmt: skip
    """A chat request: the canonical rendering (what the engine tokenizes) hashed by chunks."""
    text = render_chat(messages)
    n = len(text.encode("utf-8"))
    return SimRequest(
        session, turn, t, phase, group, tenant, math.ceil(n / TEXT_BYTES_PER_TOKEN), int(len(text) / TEXT_BYTES_PER_TOKEN) + 1,
        tuple(prefix_hashes(text)), max_tokens, len(stable_chat_prefix(messages).encode("utf-8")),
        "" if session else text,
    )  # fmt: skip


class BenchSource(Source):
    """The seeded workloads of ``bench/workload.py`` (chat_tenant, chat, agentic, docs): the same sessions, turn
    for turn and byte for byte, as ``bench.workload.generate``, produced one session at a time."""

    def __init__(self, cfg: Any, name: str = "bench") -> None:
        from bench import workload as w  # importable when running from the repository

        cfg.validate()
        self.w = w
        self.cfg = cfg
        self.name = name
        ph = w.phase_schedule(cfg)
        self._phases = ph
        self.phases = tuple(PhaseSpan(p.name, p.start, p.end) for p in ph)
        self.restarts = tuple(Restart(e.t, e.pod) for e in w.restart_schedule(cfg))
        self.duration_s = cfg.duration_s

    def sessions(self) -> Iterator[SimSession]:
        w, cfg = self.w, self.cfg
        docs = cfg.kind == w.KIND_DOCS
        prompts = w.documents(cfg) if docs else w.tenant_system_prompts(cfg)
        for idx, (start, group) in enumerate(w.arrivals(cfg, self._phases)):
            if docs:
                s = w._docs_query(cfg, self._phases, idx, start, group, prompts[group])
            else:
                s = w._chat_session(cfg, self._phases, idx, start, group, prompts[group])
            if not s.requests:
                continue
            reqs = [
                from_messages(r.session_id, r.turn, r.t, r.phase, r.tenant, r.tenant_id, r.messages, r.max_tokens)
                for r in s.requests
            ]
            yield SimSession(s.session_id, start, reqs)


def bench_source(workload: str, *, quick: bool, seed: int, pods: int, overrides: Mapping[str, Any]) -> BenchSource:
    """A named preset of ``bench/presets.py`` (ImportError outside the repository: use a trace file)."""
    from bench import presets

    p = presets.PRESETS.get(workload)
    if p is None:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(presets.ALL_WORKLOADS)}")
    return BenchSource(p.workload(quick=quick, seed=seed, pods=pods, overrides=overrides), workload)


def preset_sizing(workload: str) -> tuple[int, int]:
    """(KV blocks per pod, max_model_len) of a bench preset."""
    from bench import presets

    p = presets.PRESETS[workload]
    return p.kv_blocks, p.max_model_len


class TraceSource(Source):
    """A JSONL trace, one request per line, in any order:

    ``{"t": 1.5, "session": "s1", "tenant": "acme", "max_tokens": 64, "phase": "steady",
       "messages": [...] | "prompt": "..." | "block_hashes": [...] with "prompt_tokens": N}``

    ``t`` (seconds) and ``max_tokens`` are required, and one of messages / prompt / block_hashes. Requests of one
    session are sent in ``t`` order, each after the previous one finished. Without a session a line is a session
    of its own. ``phase`` names the report row (default "steady"); ``restart`` lines ``{"restart": POD, "t": T}``
    restart pod index POD at T.
    """

    def __init__(self, path: str | pathlib.Path) -> None:
        self.name = pathlib.Path(path).name
        by_session: dict[str, list[SimRequest]] = {}
        restarts: list[Restart] = []
        phase_span: dict[str, list[float]] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    if "restart" in rec:
                        restarts.append(Restart(float(rec["t"]), int(rec["restart"])))
                        continue
                    r = self._request(rec, lineno)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: {exc}") from None
                by_session.setdefault(r.session or f"line-{lineno}", []).append(r)
                span = phase_span.setdefault(r.phase, [r.t, r.t])
                span[0] = min(span[0], r.t)
                span[1] = max(span[1], r.t)
        self._sessions = sorted(
            (SimSession(sid, min(r.t for r in rs), sorted(rs, key=lambda r: r.t)) for sid, rs in by_session.items()),
            key=lambda s: (s.start, s.session),
        )
        for s in self._sessions:
            for k, r in enumerate(s.requests):
                r.turn = k
                if not r.session:
                    r.session = s.session
        self.duration_s = max((r.t for s in self._sessions for r in s.requests), default=0.0)
        ordered = sorted(phase_span.items(), key=lambda kv: kv[1][0])
        self.phases = tuple(
            PhaseSpan(name, lo, ordered[i + 1][1][0] if i + 1 < len(ordered) else max(hi, self.duration_s) + 1e-9)
            for i, (name, (lo, hi)) in enumerate(ordered)
        )
        self.restarts = tuple(sorted(restarts, key=lambda e: e.t))

    @staticmethod
    def _request(rec: Mapping[str, Any], lineno: int) -> SimRequest:
        t = float(rec["t"])
        max_tokens = int(rec["max_tokens"])
        if t < 0 or max_tokens < 1:
            raise ValueError("t must be >= 0 and max_tokens >= 1")
        session = str(rec.get("session") or "")
        tenant = str(rec.get("tenant") or "")
        phase = str(rec.get("phase") or PHASE_DEFAULT)
        if "messages" in rec:
            return from_messages(session, 0, t, phase, -1, tenant, rec["messages"], max_tokens)
        if "prompt" in rec:
            text = str(rec["prompt"])
            n = len(text.encode("utf-8"))
            return SimRequest(
                session, 0, t, phase, -1, tenant, math.ceil(n / TEXT_BYTES_PER_TOKEN), int(len(text) / TEXT_BYTES_PER_TOKEN) + 1,
                tuple(prefix_hashes(text)), max_tokens, None, "" if session else text,
            )  # fmt: skip
        hashes = tuple(int(h) for h in rec["block_hashes"])
        tokens = int(rec.get("prompt_tokens") or len(hashes) * CHUNK_BYTES // TEXT_BYTES_PER_TOKEN + 1)
        if tokens < len(hashes) * CHUNK_BYTES // TEXT_BYTES_PER_TOKEN:
            raise ValueError("prompt_tokens is shorter than its block_hashes")
        return SimRequest(
            session, 0, t, phase, -1, tenant, tokens, tokens, hashes, max_tokens, None,
            "" if session else f"{hashes[-1] if hashes else lineno:x}",
        )  # fmt: skip

    def sessions(self) -> Iterator[SimSession]:
        for s in self._sessions:
            yield SimSession(s.session, s.start, [dataclasses.replace(r) for r in s.requests])


class Prefetched(Source):
    """``inner``'s sessions generated in a second process (fork) and handed over in batches, in the same order:
    on two cores the workload generator (text synthesis, rendering, chunk hashing) runs beside the fleet."""

    def __init__(self, inner: Source, batch: int = 128, depth: int = 64) -> None:
        self.inner = inner
        self.name = inner.name
        self.phases = inner.phases
        self.restarts = inner.restarts
        self.duration_s = inner.duration_s
        self.batch = batch
        self.depth = depth

    @staticmethod
    def _produce(inner: Source, q: Any, batch: int, parent: int) -> None:
        import os
        import queue

        def put(item: list[SimSession] | None) -> bool:
            while True:
                try:
                    q.put(item, timeout=1.0)
                    return True
                except queue.Full:
                    if os.getppid() != parent:  # the simulator is gone (killed): stop, do not linger
                        return False

        buf: list[SimSession] = []
        for s in inner.sessions():
            buf.append(s)
            if len(buf) >= batch:
                if not put(buf):
                    return
                buf = []
        if put(buf):
            put(None)

    def sessions(self) -> Iterator[SimSession]:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue(self.depth)
        import os

        proc = ctx.Process(target=self._produce, args=(self.inner, q, self.batch, os.getpid()), daemon=True)
        proc.start()
        try:
            while True:
                got = q.get()
                if got is None:
                    break
                yield from got
        finally:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=10)
            q.close()
