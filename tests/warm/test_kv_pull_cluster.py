"""The KV pull hint with real processes: an assigner and two sim runtimes with a KV connector. A request sent to a
pod with a hint naming a peer the assigner told it of reads its history from that peer before it runs; a hint
naming any other pod makes no call, and a malformed one is refused by name."""

from __future__ import annotations

import json
import pathlib
import re
import urllib.request
from typing import Any

import pytest

from sharder.headers import KV_PULL_HEADER as HEADER
from tests.router.conftest import MODEL, post
from tests.waiting import wait_until
from tests.warm.test_warm_cluster import WarmCluster

pytestmark = pytest.mark.slow

SYSTEM = "You are the agent of the KV pull test; remember every tool output. " * 30
GROUP = 0x5EED << 32


def _chat(turns: list[str]) -> dict[str, Any]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for i, t in enumerate(turns):
        if i:
            msgs.append({"role": "assistant", "content": f"answer {i}"})
        msgs.append({"role": "user", "content": t})
    return {"model": MODEL, "messages": msgs, "max_tokens": 2}


def _pulls(url: str, outcome: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^brunoise_runtime_kv_pulls_total{{outcome="{outcome}"}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _cached(raw: bytes) -> tuple[int, int]:
    usage = json.loads(raw)["usage"]
    return usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def test_a_hinted_request_reads_its_history_from_the_named_peer_and_from_no_other(tmp_path: pathlib.Path) -> None:
    c = WarmCluster(tmp_path, warm_deadline_s=0.0)  # no warm-up: pod1 gets nothing of pod0's but by a pull
    c.runtime_args = ["--kv-transfer-gb-per-s", "10"]
    try:
        c.start_assigners()
        c.configure_target()
        c.start_runtime("pod0", "eu").wait_ready(60)
        c.start_runtime("pod1", "eu").wait_ready(60)
        wait_until(lambda: {"pod0", "pod1"} <= {p.id for p in c.assignment().pods}, 30, "both registered")
        c.pin(["pod0", "pod1"])
        wait_until(lambda: all(set(s.replicas) == {"pod0", "pod1"} for s in c.assignment().slices), 30, "both hold it")
        pod0, pod1 = c.pod_http("pod0"), c.pod_http("pod1")

        key = GROUP | 1
        keyed = {"x-brunoise-slice-key": str(key)}
        st, _, raw = post(pod1 + "/v1/chat/completions", _chat(["hello"]), {**keyed, HEADER: "pod0 5"})
        assert st == 400 and HEADER.encode() in raw
        st, _, _ = post(pod1 + "/v1/chat/completions", _chat(["hello"]), {**keyed, HEADER: f"pod9 {key} {key + 1}"})
        assert st == 200 and _pulls(pod1, "unknown_peer") == 1 and _pulls(pod1, "read") == 0

        def one_session(i: int) -> tuple[int, int] | None:
            """A fresh session's first turn on pod0, its next turn on pod1 naming pod0: its cached tokens there when
            the pull read (pod1 learns its peers from its report answers), else None."""
            k = GROUP | (100 + i)
            history = [f"session {i}: " + "tool output " * 300]
            st, _, _ = post(pod0 + "/v1/chat/completions", _chat(history), {"x-brunoise-slice-key": str(k)})
            assert st == 200
            before = _pulls(pod1, "read")
            hint = {"x-brunoise-slice-key": str(k), HEADER: f"pod0 {k} {k + 1}"}
            st, _, raw = post(pod1 + "/v1/chat/completions", _chat([*history, "next"]), hint)
            assert st == 200
            return _cached(raw) if _pulls(pod1, "read") > before else None

        attempts = iter(range(40))
        prompt, cached = wait_until(lambda: one_session(next(attempts)), 30, "a pull read from pod0")
        assert cached >= prompt - 64  # the history came cached, not computed on pod1
    finally:
        c.close()
