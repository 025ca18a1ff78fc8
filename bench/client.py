"""The benchmark's client: one streaming chat completion with the workload's headers, and what it saw."""

from __future__ import annotations

import dataclasses
import json
import time

import aiohttp

from bench.pods import MODEL
from bench.workload import Request
from sharder.headers import (
    PICK_HEADER,
    PICK_RULE_HEADER,
    POD_ID_HEADER,
    ROUTER_POD_HEADER,
    SESSION_HEADERS,
    TENANT_HEADER,
)


def request_headers(req: Request) -> dict[str, str]:
    """The headers of ``req``: its session id always, its tenant when the workload sends one."""
    headers = {SESSION_HEADERS[0]: req.session_id, "content-type": "application/json"}
    if req.tenant_id:
        headers[TENANT_HEADER] = req.tenant_id
    return headers


@dataclasses.dataclass(slots=True)
class Result:
    """What the client saw for one request."""

    index: int
    phase: str  # planned; the run sets the phase it was sent in (``sent_s``)
    status: int = 0
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float | None = None
    late_s: float = 0.0
    #: Seconds from the run's start to the send (the planned time plus ``late_s``); ``phase`` is the phase then.
    sent_s: float = 0.0
    pod: str = ""
    #: brunoise-router only (empty for the peers): the pick's outcome and rule, from its response headers.
    pick: str = ""
    rule: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


async def send(session: aiohttp.ClientSession, base: str, req: Request, timeout_s: float) -> Result:
    """One streaming chat completion; TTFT is the arrival of the first non-empty content delta."""
    res = Result(req.index, req.phase)
    body = {
        "model": MODEL, "messages": list(req.messages), "max_tokens": req.max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = request_headers(req)
    t0 = time.monotonic()
    done = False
    try:
        async with session.post(
            f"{base}/v1/chat/completions", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            res.status = resp.status
            res.pod = resp.headers.get(POD_ID_HEADER) or resp.headers.get(ROUTER_POD_HEADER) or ""
            res.pick = resp.headers.get(PICK_HEADER, "")
            res.rule = resp.headers.get(PICK_RULE_HEADER, "")
            if resp.status != 200:
                res.error = f"http_{resp.status}"
                await resp.read()
                return res
            buf = b""
            async for raw in resp.content:
                buf += raw
                if not buf.endswith(b"\n"):
                    continue
                line = buf.strip()
                buf = b""
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    res.error = "bad_sse"
                    continue
                if "error" in obj:
                    res.error = "stream_error"
                    continue
                for ch in obj.get("choices") or ():
                    delta = ch.get("delta") or {}
                    if res.ttft_s is None and (delta.get("content") or ch.get("text")):
                        res.ttft_s = time.monotonic() - t0
                usage = obj.get("usage")
                if usage:
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    res.completion_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    res.cached_tokens = int(details.get("cached_tokens") or 0)
    except TimeoutError:
        res.error = "timeout"
    except aiohttp.ClientError as exc:
        res.error = type(exc).__name__
    res.e2e_s = time.monotonic() - t0
    if not res.error and not done:
        res.error = "truncated_stream"
    return res
