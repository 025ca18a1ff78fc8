"""The demo workload: multi-turn sessions with shared system prompts, streamed through the router's OpenAI API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence

import aiohttp

from sharder.promtext import sum_by_name

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are Brunoise Support, the help desk assistant of a company that sells kitchen knives. "
    "Answer politely and briefly. Always check the order number first. Never promise refunds above "
    "the order value. Knife care: hand wash only, dry immediately, hone weekly, sharpen twice a year. "
    "Shipping takes three to five business days inside the EU and seven to ten elsewhere. ",
    "You are a senior Python reviewer. Point out bugs first, then style. Prefer small diffs. Quote the "
    "line you comment on. Mention tests that would catch the bug. Keep every answer under ten lines. "
    "Type hints are required everywhere; asyncio code must never block the event loop. ",
    "You are a travel planner for rail trips across Europe. Suggest direct trains when possible, "
    "night trains for legs above seven hours, and always give a backup connection. Prices are in "
    "euros. Mention seat reservations where they are mandatory and how early to book them. ",
)

USER_TURNS: tuple[str, ...] = (
    "Hello! Can you help me with something?",
    "Here are the details: {topic}. What do you suggest?",
    "Thanks. What would you do differently if the budget were half?",
    "Could you summarise that in three bullet points?",
    "One more question about {topic}: what is the most common mistake?",
    "Great, that is all. Anything else I should know?",
)
TOPICS = ("order 1042 arrived with a chipped blade", "a function that leaks file handles",
          "Paris to Vienna in two days", "a gift for a chef", "an async crawler", "Lisbon to Seville")



@dataclasses.dataclass
class DemoResult:
    """What the demo measured, client side and from the pods' /metrics."""

    sessions: int
    turns: int
    requests: int = 0
    errors: int = 0
    ttft_s: list[float] = dataclasses.field(default_factory=list)
    latency_s: list[float] = dataclasses.field(default_factory=list)
    completion_tokens: int = 0
    duration_s: float = 0.0
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    per_pod_hit_rate: dict[str, float] = dataclasses.field(default_factory=dict)
    first_error: str = ""

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries > 0 else 0.0

    def ttft_pct(self, q: float) -> float:
        """The q-quantile (0..1) of the time to first token, in seconds (nearest rank)."""
        if not self.ttft_s:
            return 0.0
        xs = sorted(self.ttft_s)
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def parse_prefix_metrics(text: str) -> tuple[float, float]:
    """(hits, queries) summed over every series of vllm:prefix_cache_{hits,queries}_total in a Prometheus text."""
    sums = sum_by_name(text)
    return sums.get("vllm:prefix_cache_hits_total", 0.0), sums.get("vllm:prefix_cache_queries_total", 0.0)


async def scrape_prefix(session: aiohttp.ClientSession, pods_http: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """(hits, queries) per pod from each pod's /metrics; pods that do not answer are left out."""

    async def one(url: str) -> tuple[float, float] | None:
        try:
            async with session.get(url.rstrip("/") + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return None
                return parse_prefix_metrics(await r.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):  # ValueError: a truncated exposition
            return None

    names = list(pods_http)
    got = await asyncio.gather(*(one(pods_http[n]) for n in names))
    return {n: g for n, g in zip(names, got, strict=True) if g is not None}


async def _one_request(
    session: aiohttp.ClientSession, url: str, model: str, session_id: str, messages: Sequence[Mapping[str, str]],
    max_tokens: int, api_key: str = "",
) -> tuple[float, float, str, int]:
    """Stream one chat completion; (ttft, latency, text, completion tokens). Raises RuntimeError on failure."""
    body = {"model": model, "messages": list(messages), "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    tokens = 0
    headers = {"x-session-id": session_id, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    async with session.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                continue
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"])[:200])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(piece)
            usage = chunk.get("usage")
            if usage:
                tokens = int(usage.get("completion_tokens", 0))
    latency = time.perf_counter() - t0
    return (ttft if ttft is not None else latency), latency, "".join(text), tokens


async def run_demo(
    router_http: str,
    model: str,
    pods_http: Mapping[str, str],
    *,
    sessions: int = 12,
    turns: int = 4,
    concurrency: int = 8,
    max_tokens: int = 24,
    seed: int = 7,
    on_request: Callable[[], None] | None = None,
    api_key: str = "",
) -> DemoResult:
    """Run ``sessions`` conversations of ``turns`` turns each (concurrently, turns in order) through the router
    (``api_key``: the router's key, sent as ``Authorization: Bearer``)."""
    rng = random.Random(seed)
    url = router_http.rstrip("/") + "/v1/chat/completions"
    result = DemoResult(sessions=sessions, turns=turns)
    sem = asyncio.Semaphore(max(1, concurrency))
    timeout = aiohttp.ClientTimeout(total=60, sock_read=30)

    async with aiohttp.ClientSession(timeout=timeout) as http:
        before = await scrape_prefix(http, pods_http)
        t0 = time.perf_counter()

        async def conversation(i: int) -> None:
            sid = f"demo-{seed}-{i:03d}"
            topic = TOPICS[rng.randrange(len(TOPICS))]
            messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]}]
            for t in range(turns):
                messages.append({"role": "user", "content": USER_TURNS[t % len(USER_TURNS)].format(topic=topic)})
                async with sem:
                    try:
                        ttft, lat, text, toks = await _one_request(http, url, model, sid, messages, max_tokens, api_key)
                    except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                        result.errors += 1
                        result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                        text, toks = "", 0
                    else:
                        result.ttft_s.append(ttft)
                        result.latency_s.append(lat)
                        result.completion_tokens += toks
                result.requests += 1
                messages.append({"role": "assistant", "content": text or "(no answer)"})
                if on_request is not None:
                    on_request()

        await asyncio.gather(*(conversation(i) for i in range(sessions)))
        result.duration_s = time.perf_counter() - t0
        after = await scrape_prefix(http, pods_http)

    for pod, (h1, q1) in after.items():
        h0, q0 = before.get(pod, (0.0, 0.0))
        dh, dq = max(0.0, h1 - h0), max(0.0, q1 - q0)
        result.prefix_hits += dh
        result.prefix_queries += dq
        result.per_pod_hit_rate[pod] = dh / dq if dq > 0 else 0.0
    return result
