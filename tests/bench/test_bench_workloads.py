"""The named workloads: chat with and without a tenant header, agentic contexts that grow, docs queries."""

from __future__ import annotations

import collections
import dataclasses
import itertools

import pytest

from bench.client import request_headers
from bench.presets import ALL_WORKLOADS, PRESETS, select
from bench.workload import (
    KIND_DOCS,
    PHASE_HOT,
    PHASE_STEADY,
    Workload,
    generate,
    prompt_tokens,
    workload_oracle,
    zipf_weights,
)
from sharder.headers import SESSION_HEADERS, TENANT_HEADER
from sharder.prefix import CHUNK_BYTES, prefix_hashes


def quick(name: str, seed: int = 0) -> Workload:
    return generate(PRESETS[name].workload(quick=True, seed=seed, pods=4, overrides={}))


@pytest.mark.parametrize("name", ALL_WORKLOADS)
def test_every_workload_is_seeded(name: str) -> None:
    cfg = PRESETS[name].workload(quick=True, seed=5, pods=4, overrides={})
    a, b = generate(cfg), generate(cfg)
    assert a.requests == b.requests and a.system_prompts == b.system_prompts
    c = generate(dataclasses.replace(cfg, seed=6))
    assert [r.prompt for r in a.requests] != [r.prompt for r in c.requests]
    assert {r.phase for r in a.requests} >= {PHASE_STEADY, PHASE_HOT}
    assert [e.pod for e in a.restarts] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ALL_WORKLOADS)
def test_prompts_fit_the_pods_and_the_kv_cannot_hold_everything_everywhere(name: str) -> None:
    p = PRESETS[name]
    for q in (True, False):
        wl = generate(p.workload(quick=q, seed=0, pods=4, overrides={}))
        assert max(prompt_tokens(r.prompt) + r.max_tokens for r in wl.requests) <= p.max_model_len
        assert p.kv_blocks * 16 >= p.max_model_len
        # the distinct prefix blocks (64-byte chunks = 16-token blocks) of the workload outgrow one pod's cache
        blocks: set[int] = set()
        for r in wl.requests:
            blocks.update(prefix_hashes(r.prompt, CHUNK_BYTES))
        assert len(blocks) > p.kv_blocks


def test_chat_tenant_sends_the_tenant_and_chat_does_not() -> None:
    with_tenant = quick("chat_tenant")
    without = quick("chat")
    assert [r.prompt for r in with_tenant.requests] == [r.prompt for r in without.requests]
    for r in with_tenant.requests:
        h = request_headers(r)
        assert h[TENANT_HEADER] == f"tenant-{r.tenant}"
        assert h[SESSION_HEADERS[0]] == r.session_id
    for r in without.requests:
        h = request_headers(r)
        assert TENANT_HEADER not in h
        assert h[SESSION_HEADERS[0]] == r.session_id


def test_agentic_context_grows_to_tens_of_thousands_of_tokens() -> None:
    p = PRESETS["agentic"]
    wl = generate(p.workload(quick=True, seed=0, pods=4, overrides={}))
    longest = max(wl.sessions, key=lambda s: len(s.requests))
    tokens = [prompt_tokens(r.prompt) for r in longest.requests]
    assert len(tokens) >= 10
    assert all(b > a for a, b in itertools.pairwise(tokens))  # every turn appends
    assert max(tokens) >= 20_000
    assert max(prompt_tokens(r.prompt) for r in wl.requests) <= p.config.max_prompt_tokens
    for prev, cur in zip(longest.requests, longest.requests[1:], strict=False):
        assert cur.messages[: len(prev.messages)] == prev.messages
        added = cur.messages[len(prev.messages) :]
        assert [m["role"] for m in added] == ["assistant", "user"]
        lo, hi = p.config.tool_output_bytes
        assert added[1]["content"].startswith("tool output:\n")
        assert lo <= len(added[1]["content"]) - len("tool output:\n") <= hi
        assert len(added[0]["content"]) <= 256  # a short model reply
    assert all(request_headers(r).get(TENANT_HEADER) == f"tenant-{r.tenant}" for r in wl.requests)


def test_docs_queries_have_fresh_sessions_and_zipf_documents() -> None:
    p = PRESETS["docs"]
    wl = generate(p.workload(quick=True, seed=0, pods=4, overrides={}))
    ids = [r.session_id for r in wl.requests]
    assert len(ids) == len(set(ids))  # a fresh session id per request
    for r in wl.requests:
        assert r.turn == 0 and len(r.messages) == 1
        doc = wl.system_prompts[r.tenant]
        assert r.messages[0]["content"].startswith(doc + "\n\nQuestion: ")  # the document first
        assert TENANT_HEADER not in request_headers(r)
    assert len(wl.system_prompts) == p.config.documents
    lo, hi = p.config.document_bytes
    assert all(lo <= len(d) <= hi for d in wl.system_prompts)


def test_docs_popularity_is_zipf_and_the_hot_document_jumps() -> None:
    cfg = dataclasses.replace(
        PRESETS["docs"].config, documents=8, warmup_s=0.0, steady_s=300.0, hot_s=100.0, restart_s=0.0, session_rate=8.0
    )
    wl = generate(cfg)
    assert cfg.kind == KIND_DOCS
    steady = collections.Counter(r.tenant for r in wl.requests if r.phase == PHASE_STEADY)
    n = sum(steady.values())
    for doc, share in enumerate(zipf_weights(8, cfg.zipf_s)):
        assert steady[doc] / n == pytest.approx(share, abs=0.03)
    hot = collections.Counter(r.tenant for r in wl.requests if r.phase == PHASE_HOT)
    per_s_steady = steady[cfg.hot_tenant] / cfg.steady_s
    per_s_hot = hot[cfg.hot_tenant] / cfg.hot_s
    assert per_s_hot / per_s_steady == pytest.approx(cfg.hot_factor, rel=0.25)


@pytest.mark.parametrize("name", ALL_WORKLOADS)
def test_oracle_sane_per_workload(name: str) -> None:
    wl = quick(name)
    o = workload_oracle(wl)
    assert 0.0 < o.hit_rate < 1.0
    assert sum(q for q, _ in o.per_phase.values()) == o.query_tokens
    assert sum(h for _, h in o.per_phase.values()) == o.hit_tokens
    # shared prefixes (system prompts, histories, documents) leave most tokens cached for an infinite cache
    assert o.phase_hit_rate(PHASE_STEADY) > 0.5


def test_select_workloads() -> None:
    assert select("all") == ALL_WORKLOADS
    assert select("docs, chat") == ("docs", "chat")
    with pytest.raises(ValueError, match="unknown workload"):
        select("chat,nope")
