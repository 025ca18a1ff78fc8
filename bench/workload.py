"""Seeded workload generators (multi-turn chat, agentic sessions, single-turn document queries), phases, oracle."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

from sharder.prefix import CHUNK_BYTES, TEXT_BYTES_PER_TOKEN, matched_chunks, prefix_hashes, render_chat

PHASE_WARMUP = "warmup"
PHASE_STEADY = "steady"
PHASE_HOT = "hot_tenant"
PHASE_RESTART = "restart"

#: Generator kinds: multi-turn sessions (chat, and agentic when ``tool_output_bytes`` is set) or document queries.
KIND_CHAT = "chat"
KIND_DOCS = "docs"
KINDS: tuple[str, ...] = (KIND_CHAT, KIND_DOCS)

_WORD_TEXT = """the a of to and in is it you that he was for on are with as his they be at one have this from or had by
    word but what some we can out other were all there when up use your how said an each she which do their time if
    will way about many then them write would like so these her long make thing see him two has look more day could
    go come did number sound no most people my over know water than call first who may down side been now find any
    new work part take get place made live where after back little only round man year came show every good me give
    our under name very through just form sentence great think say help low line differ turn cause much mean before
    move right boy old too same tell does set three want air well also play small end put home read hand port large
    spell add even land here must big high such follow act why ask men change went light kind off need house picture
    try us again animal point mother world near build self earth father head stand own page should country found
    answer school grow study still learn plant cover food sun four between state keep eye never last let thought
    city tree cross farm hard start might story saw far sea draw left late run while press close night real life few
    north open seem together next white children begin got walk example ease paper group always music those both
    mark often letter until mile river car feet care second book carry took science eat room friend began idea fish
    mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready above
    ever red list though feel talk bird soon body dog family direct pose leave song measure door product black short
    numeral class wind question happen complete ship area half rock order fire south problem piece told knew pass
    since top whole king space heard best hour better true during hundred five remember step early hold west ground
    interest reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay
    against pattern slow center love person money serve appear road map rain rule govern pull cold notice voice
    unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
    correct able pound done beauty drive stood contain front teach week final gave green oh quick develop ocean warm
    free minute strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel
    full force blue object decide surface deep moon island foot system busy test record boat common gold possible
    plane stead dry wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes
    distant fill east paint language among"""
_WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


def synth_text(rng: random.Random, n_bytes: int) -> str:
    """Exactly ``n_bytes`` of ASCII words (one byte per character), drawn from ``rng``."""
    if n_bytes <= 0:
        return ""
    parts: list[str] = []
    size = -1  # the joined length: words plus one space between each two
    while size < n_bytes:
        w = rng.choice(_WORDS)
        parts.append(w)
        size += len(w) + 1
    return " ".join(parts)[:n_bytes]


def zipf_weights(n: int, s: float) -> list[float]:
    """Normalised Zipf probabilities 1/(i+1)^s for ranks 0..n-1."""
    if n <= 0:
        raise ValueError(f"need at least one tenant, got {n}")
    raw = [1.0 / (i + 1) ** s for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Shape of a workload. Times are seconds of bench (wall-clock) time from the start of the run.

    ``kind`` chat: sessions of turns, each turn the whole conversation so far; with ``tool_output_bytes`` set, every
    turn after the first appends a tool output instead of a user message (an agent loop). ``kind`` docs: every
    arrival is one single-turn query over one of ``documents`` Zipf-popular documents, with a fresh session id.
    """

    seed: int = 0
    kind: str = KIND_CHAT
    #: Send ``x-tenant-id: tenant-<i>`` with every request (sessions of kind chat only; docs queries carry no tenant).
    tenant_header: bool = True
    tenants: int = 8
    zipf_s: float = 1.1
    #: Bytes of the preamble every tenant's system prompt starts with (shared across tenants).
    common_preamble_bytes: int = 512
    #: Each tenant's own system prompt size (after the preamble) is drawn uniformly from this range.
    system_prompt_bytes: tuple[int, int] = (1024, 4096)
    user_message_bytes: tuple[int, int] = (64, 512)
    reply_bytes: tuple[int, int] = (64, 256)
    turns: tuple[int, int] = (2, 8)
    #: (0, 0): chat turns. Otherwise each turn after the first appends a tool output of this many bytes (agentic).
    tool_output_bytes: tuple[int, int] = (0, 0)
    #: A session ends before a turn whose prompt would exceed this many tokens (0: no cap); keep it under the
    #: pods' max_model_len minus the reply.
    max_prompt_tokens: int = 0
    #: Documents (kind docs), drawn Zipf(``zipf_s``); each one's size is drawn uniformly from ``document_bytes``.
    documents: int = 32
    document_bytes: tuple[int, int] = (4096, 24576)
    #: Mean think time between the turns of one session (exponential), seconds.
    think_s: float = 1.0
    #: New sessions per second in the steady phase (Poisson), all tenants together.
    session_rate: float = 2.0
    #: Steady load from cold caches; the steady phase after it is the warm reference the other phases compare to.
    warmup_s: float = 6.0
    steady_s: float = 10.0
    hot_s: float = 8.0
    restart_s: float = 16.0
    #: Zipf rank of the tenant (document, for docs) whose arrival rate jumps ``hot_factor`` x in the hot phase.
    hot_tenant: int = 2
    hot_factor: float = 10.0
    #: Pods to restart, one at a time, during the restart phase.
    pods: int = 4

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("system_prompt_bytes", "user_message_bytes", "reply_bytes", "turns", "document_bytes"):
            lo, hi = getattr(self, name)
            if lo < 1 or hi < lo:
                raise ValueError(f"{name} must be a range 1 <= lo <= hi, got {(lo, hi)}")
        lo, hi = self.tool_output_bytes
        if (lo, hi) != (0, 0) and (lo < 1 or hi < lo):
            raise ValueError(f"tool_output_bytes must be (0, 0) or a range 1 <= lo <= hi, got {(lo, hi)}")
        if self.max_prompt_tokens < 0:
            raise ValueError(f"max_prompt_tokens must be >= 0, got {self.max_prompt_tokens}")
        if self.tenants < 1 or self.documents < 1:
            raise ValueError("tenants and documents must be >= 1")
        if not 0 <= self.hot_tenant < self.groups:
            raise ValueError(f"hot_tenant must be in [0, {self.groups}), got {self.hot_tenant}")
        for name in ("warmup_s", "steady_s", "hot_s", "restart_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.session_rate <= 0 or self.think_s < 0 or self.hot_factor < 0 or self.pods < 0:
            raise ValueError("session_rate must be > 0; think_s, hot_factor and pods >= 0")

    @property
    def duration_s(self) -> float:
        return self.warmup_s + self.steady_s + self.hot_s + self.restart_s

    @property
    def groups(self) -> int:
        """What arrivals are drawn over by Zipf rank: tenants (chat) or documents (docs)."""
        return self.documents if self.kind == KIND_DOCS else self.tenants


@dataclasses.dataclass(frozen=True, slots=True)
class Phase:
    """A span [start, end) of the run and the session-arrival rate multiplier of each tenant in it."""

    name: str
    start: float
    end: float
    tenant_factors: tuple[float, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RestartEvent:
    """Restart pod ``pod`` (index into the pool) at ``t`` seconds: drain, stop, start again with the same id."""

    t: float
    pod: int


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One chat completion: the full conversation so far, sent no earlier than ``t`` and after turn ``turn - 1``."""

    index: int
    t: float
    session_id: str
    tenant: int
    turn: int
    phase: str
    messages: tuple[Mapping[str, str], ...]
    max_tokens: int
    #: The ``x-tenant-id`` header to send ("" = none).
    tenant_id: str = ""

    @property
    def prompt(self) -> str:
        """The canonical prompt text (what the simulated engine tokenizes and caches)."""
        return render_chat(self.messages)


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    tenant: int
    start: float
    requests: tuple[Request, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    config: WorkloadConfig
    phases: tuple[Phase, ...]
    restarts: tuple[RestartEvent, ...]
    sessions: tuple[Session, ...]
    #: Every request of every session, ordered by scheduled time (index = position).
    requests: tuple[Request, ...]
    #: The tenants' system prompts (chat) or the documents (docs), by Zipf rank.
    system_prompts: tuple[str, ...]

    def phase_at(self, t: float) -> str:
        return phase_at(self.phases, t)


def phase_schedule(cfg: WorkloadConfig) -> tuple[Phase, ...]:
    """Warm-up and steady, then one tenant (document) at ``hot_factor`` x, then steady while every pod restarts."""
    ones = tuple(1.0 for _ in range(cfg.groups))
    hot = tuple(cfg.hot_factor if i == cfg.hot_tenant else 1.0 for i in range(cfg.groups))
    t0 = cfg.warmup_s
    t1 = t0 + cfg.steady_s
    t2 = t1 + cfg.hot_s
    t3 = t2 + cfg.restart_s
    phases = [
        Phase(PHASE_WARMUP, 0.0, t0, ones),
        Phase(PHASE_STEADY, t0, t1, ones),
        Phase(PHASE_HOT, t1, t2, hot),
        Phase(PHASE_RESTART, t2, t3, ones),
    ]
    return tuple(p for p in phases if p.end > p.start)


def restart_schedule(cfg: WorkloadConfig) -> tuple[RestartEvent, ...]:
    """One restart per pod, evenly spaced inside the restart phase (the first after a short lead-in)."""
    if cfg.pods == 0 or cfg.restart_s <= 0:
        return ()
    start = cfg.warmup_s + cfg.steady_s + cfg.hot_s
    gap = cfg.restart_s / (cfg.pods + 1)
    return tuple(RestartEvent(round(start + gap * (k + 0.5), 6), k) for k in range(cfg.pods))


def phase_at(phases: Sequence[Phase], t: float) -> str:
    for p in phases:
        if p.start <= t < p.end:
            return p.name
    return phases[-1].name if phases else PHASE_STEADY


def _uniform_int(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(bounds[0], bounds[1])


def arrivals(cfg: WorkloadConfig, phases: Sequence[Phase]) -> list[tuple[float, int]]:
    """(time, group) of every session (docs: query): a Poisson process per phase, the group drawn Zipf-weighted."""
    base = zipf_weights(cfg.groups, cfg.zipf_s)
    rng = random.Random(f"{cfg.seed}:arrivals")
    starts: list[tuple[float, int]] = []
    for ph in phases:
        weights = [b * f for b, f in zip(base, ph.tenant_factors, strict=True)]
        rate = cfg.session_rate * sum(weights)
        if rate <= 0:
            continue
        t = ph.start
        while True:
            t += rng.expovariate(rate)
            if t >= ph.end:
                break
            starts.append((t, rng.choices(range(cfg.groups), weights=weights)[0]))
    return starts


def tenant_system_prompts(cfg: WorkloadConfig) -> tuple[str, ...]:
    """Every tenant's system prompt: the shared preamble, then the tenant's own text."""
    preamble = synth_text(random.Random(f"{cfg.seed}:preamble"), cfg.common_preamble_bytes)
    return tuple(
        preamble
        + synth_text(
            random.Random(f"{cfg.seed}:tenant:{i}"),
            _uniform_int(random.Random(f"{cfg.seed}:tsize:{i}"), cfg.system_prompt_bytes),
        )
        for i in range(cfg.tenants)
    )


def documents(cfg: WorkloadConfig) -> tuple[str, ...]:
    """The documents of a docs workload (Zipf rank = index)."""
    return tuple(
        synth_text(
            random.Random(f"{cfg.seed}:doc:{i}"),
            _uniform_int(random.Random(f"{cfg.seed}:dsize:{i}"), cfg.document_bytes),
        )
        for i in range(cfg.documents)
    )


def _chat_session(
    cfg: WorkloadConfig, phases: Sequence[Phase], s_idx: int, start: float, tenant: int, system: str
) -> Session:
    """One multi-turn session: chat turns, or (``tool_output_bytes`` set) an agent loop of tool outputs."""
    rng = random.Random(f"{cfg.seed}:session:{s_idx}")
    sid = f"s{s_idx:05d}-t{tenant}"
    tenant_id = f"tenant-{tenant}" if cfg.tenant_header else ""
    agentic = cfg.tool_output_bytes != (0, 0)
    n_turns = _uniform_int(rng, cfg.turns)
    history: list[dict[str, str]] = [{"role": "system", "content": system}]
    t = start
    reqs: list[Request] = []
    for turn in range(n_turns):
        if turn > 0:
            t += rng.expovariate(1.0 / cfg.think_s) if cfg.think_s > 0 else 0.0
        if t >= cfg.duration_s:
            break
        if agentic and turn > 0:
            content = "tool output:\n" + synth_text(rng, _uniform_int(rng, cfg.tool_output_bytes))
        else:
            content = synth_text(rng, _uniform_int(rng, cfg.user_message_bytes))
        history.append({"role": "user", "content": content})
        reply = synth_text(rng, _uniform_int(rng, cfg.reply_bytes))
        max_tokens = max(1, math.ceil(len(reply) / TEXT_BYTES_PER_TOKEN))
        messages = tuple(dict(m) for m in history)
        if cfg.max_prompt_tokens and prompt_tokens(render_chat(messages)) > cfg.max_prompt_tokens:
            break
        reqs.append(Request(-1, round(t, 6), sid, tenant, turn, phase_at(phases, t), messages, max_tokens, tenant_id))
        # The next turn carries this turn's reply as history: a synthetic reply, so every router sees
        # byte-identical prompts whatever the engine answered.
        history.append({"role": "assistant", "content": reply})
    return Session(sid, tenant, start, tuple(reqs))


def _docs_query(cfg: WorkloadConfig, phases: Sequence[Phase], q_idx: int, start: float, doc: int, text: str) -> Session:
    """One single-turn query: the document first, then a short question; a session id of its own."""
    rng = random.Random(f"{cfg.seed}:query:{q_idx}")
    sid = f"q{q_idx:05d}-d{doc}"
    question = synth_text(rng, _uniform_int(rng, cfg.user_message_bytes))
    reply = synth_text(rng, _uniform_int(rng, cfg.reply_bytes))
    messages = ({"role": "user", "content": f"{text}\n\nQuestion: {question}"},)
    max_tokens = max(1, math.ceil(len(reply) / TEXT_BYTES_PER_TOKEN))
    req = Request(-1, round(start, 6), sid, doc, 0, phase_at(phases, start), messages, max_tokens)
    return Session(sid, doc, start, (req,))


def generate(cfg: WorkloadConfig) -> Workload:
    """Build the whole request sequence for ``cfg``; the same config (seed included) gives the same workload."""
    cfg.validate()
    phases = phase_schedule(cfg)
    prompts = documents(cfg) if cfg.kind == KIND_DOCS else tenant_system_prompts(cfg)
    sessions: list[Session] = []
    for idx, (start, group) in enumerate(arrivals(cfg, phases)):
        if cfg.kind == KIND_DOCS:
            sessions.append(_docs_query(cfg, phases, idx, start, group, prompts[group]))
        else:
            sessions.append(_chat_session(cfg, phases, idx, start, group, prompts[group]))
    flat = sorted((r for s in sessions for r in s.requests), key=lambda r: (r.t, r.session_id, r.turn))
    ordered = tuple(dataclasses.replace(r, index=i) for i, r in enumerate(flat))
    by_sid: dict[str, list[Request]] = {}
    for r in ordered:
        by_sid.setdefault(r.session_id, []).append(r)
    sessions = [dataclasses.replace(s, requests=tuple(by_sid.get(s.session_id, ()))) for s in sessions]
    return Workload(cfg, phases, restart_schedule(cfg), tuple(s for s in sessions if s.requests), ordered, prompts)


# ------------------------------------------------------------------------------------------------ oracle


@dataclasses.dataclass(frozen=True, slots=True)
class OracleResult:
    """Prefix-cache hits one infinite cache shared by every pod would get, in tokens, overall and per phase."""

    query_tokens: int
    hit_tokens: int
    per_phase: Mapping[str, tuple[int, int]]  # phase -> (query_tokens, hit_tokens)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def phase_hit_rate(self, phase: str) -> float:
        q, h = self.per_phase.get(phase, (0, 0))
        return h / q if q else 0.0


def prompt_tokens(text: str, bytes_per_token: int = TEXT_BYTES_PER_TOKEN) -> int:
    """Tokens the simulated engine counts for ``text``: one per ``bytes_per_token`` UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / bytes_per_token)


def oracle(
    prompts: Iterable[tuple[str, str]] | Iterable[str],
    *,
    chunk_bytes: int = CHUNK_BYTES,
    bytes_per_token: int = TEXT_BYTES_PER_TOKEN,
    capacity: Callable[[str], int] | None = None,
) -> OracleResult:
    """Replay prompts in order against one block cache shared by every pod; ``prompts`` are texts or (phase, text)
    pairs. The cache is infinite, or with ``capacity`` (chunks it holds in a phase) evicts the least recently used
    chunk, a prompt's tail before its head, as vLLM's free-block queue does.

    A request hits the leading full chunks whose chained hash an earlier request inserted (and, with a capacity,
    that are still held), but (as vLLM and the simulated engine do) never its last token: at most
    ``(tokens - 1) // block_tokens`` blocks. Hits are counted in tokens (``chunk_bytes / bytes_per_token`` per
    chunk), queries as the prompt's tokens.
    """
    held: dict[int, None] = {}  # insertion order = recency, least recent first
    per_phase: dict[str, list[int]] = {}
    q_all = h_all = 0
    tokens_per_chunk = chunk_bytes // bytes_per_token
    for item in prompts:
        phase, text = (PHASE_STEADY, item) if isinstance(item, str) else item
        hashes = prefix_hashes(text, chunk_bytes)
        q = prompt_tokens(text, bytes_per_token)
        h = min(matched_chunks(hashes, held.keys()), (q - 1) // tokens_per_chunk) * tokens_per_chunk
        for c in reversed(hashes):  # the head ends most recent: the tail goes first
            held.pop(c, None)
            held[c] = None
        if capacity is not None:
            for c in list(itertools.islice(held, max(0, len(held) - capacity(phase)))):
                del held[c]
        q_all += q
        h_all += h
        acc = per_phase.setdefault(phase, [0, 0])
        acc[0] += q
        acc[1] += h
    return OracleResult(q_all, h_all, {k: (v[0], v[1]) for k, v in per_phase.items()})


def workload_oracle(wl: Workload) -> OracleResult:
    """The oracle over a workload's requests in scheduled order."""
    return oracle((r.phase, r.prompt) for r in wl.requests)


def restart_vs_steady(
    steady: float | None, restart: float | None, o_steady: float | None, o_restart: float | None
) -> float | None:
    """The restart phase's hit rate over the steady phase's, each as a fraction of the oracle's on the same
    requests (so the restart phase's longer histories do not flatter it); None when a figure is missing or 0."""
    if restart is None or not steady or not o_steady or not o_restart:
        return None
    return (restart / o_restart) / (steady / o_steady)


def relative_restart(hits: OracleResult, ref: OracleResult) -> float | None:
    """``restart_vs_steady`` of one replay (``pool_lru``) against the oracle ``ref``."""
    return restart_vs_steady(
        hits.phase_hit_rate(PHASE_STEADY), hits.phase_hit_rate(PHASE_RESTART),
        ref.phase_hit_rate(PHASE_STEADY), ref.phase_hit_rate(PHASE_RESTART),
    )  # fmt: skip


def pool_lru(wl: Workload, pods: int, kv_blocks: int) -> OracleResult:
    """A reference, not a bound: one LRU cache of the pool's size (``pods`` x ``kv_blocks``, one pod fewer in the
    restart phase, where one pod at a time is down) over the workload in scheduled order. What a router that
    never duplicated a prefix, in front of engines that evict as vLLM does, could keep; the oracle minus this is
    what the pool's capacity costs, this minus a router's hit rate what its placement costs."""
    return oracle(
        ((r.phase, r.prompt) for r in wl.requests),
        capacity=lambda phase: (pods - 1 if phase == PHASE_RESTART else pods) * kv_blocks,
    )


def sent_oracle(wl: Workload, sent: Iterable[tuple[float, int, str]]) -> OracleResult:
    """The oracle over the requests one run sent, in the order it sent them, each in the phase it was sent in:
    ``sent`` holds (send time, request index, phase). A closed-loop session that falls behind its schedule sends
    its turns in a later phase than planned (agentic's turns run up to 15 s late), so a phase's oracle must hold
    the requests the pods served in it."""
    by_index = {r.index: r for r in wl.requests}
    return oracle((phase, by_index[i].prompt) for _, i, phase in sorted(sent))


def summary(wl: Workload) -> dict[str, object]:
    """Counts for the report: requests and sessions per phase and per group (tenant or document), prompt tokens."""
    per_phase: dict[str, int] = {}
    per_group = [0] * wl.config.groups
    tokens = [prompt_tokens(r.prompt) for r in wl.requests]
    for r in wl.requests:
        per_phase[r.phase] = per_phase.get(r.phase, 0) + 1
        per_group[r.tenant] += 1
    return {
        "requests": len(wl.requests),
        "sessions": len(wl.sessions),
        "requests_per_phase": per_phase,
        "requests_per_group": per_group,
        "prompt_tokens": sum(tokens),
        "prompt_tokens_max": max(tokens, default=0),
        "prompt_tokens_mean": (sum(tokens) / len(tokens)) if tokens else 0.0,
        "duration_s": wl.config.duration_s,
        "restarts": [dataclasses.asdict(e) for e in wl.restarts],
    }
