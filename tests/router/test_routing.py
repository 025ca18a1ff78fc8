"""Routing through real processes: subsets, spread, prefix locality, two routers, OpenAI client, gRPC, idempotency."""

from __future__ import annotations

import asyncio
import collections
import json
import uuid

import aiohttp
import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from axon_router.pick import PICK_RULES
from brunoise_api.v1 import inference_pb2, router_pb2_grpc
from sharder.keyspace import group_range
from sharder.promtext import metric_value
from tests.router.conftest import MODEL, Cluster, http_json, post, routed_key, scrape
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def router_stub(ch: grpc.aio.Channel) -> router_pb2_grpc.RouterStub:
    return router_pb2_grpc.RouterStub(ch)  # type: ignore[no-untyped-call]


SYSTEM = "You are a meticulous assistant for the brunoise test suite. Answer briefly and precisely. " * 3


def chat_body(turns: list[str], max_tokens: int = 4, **extra: object) -> dict[str, object]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for t in turns:
        msgs.append({"role": "user", "content": t})
    return {"model": MODEL, "messages": msgs, "max_tokens": max_tokens, **extra}


def test_session_turns_go_to_their_subset_and_sessions_spread(cluster: Cluster) -> None:
    first_pods: set[str] = set()
    sticky = 0
    total = 0
    for s in range(12):
        sid = f"sess-{uuid.uuid4().hex[:8]}"
        turns: list[str] = []
        pods = []
        for t in range(4):
            turns.append(f"turn {t} of session {sid}: tell me about topic {t * 7 + s}")
            key = routed_key(chat_body(turns), {"x-session-id": sid})
            before = cluster.subset(key, t % 2)
            status, headers, _ = post(
                cluster.http(t % 2) + "/v1/chat/completions", chat_body(turns), {"x-session-id": sid}
            )
            after = cluster.subset(key, t % 2)
            assert status == 200
            pod = headers["x-brunoise-pod"]
            assert pod in before | after, (sid, pod, before, after)
            assert headers["x-brunoise-pick"] == "in_subset"
            # why that pod: a new session by cost or balance, never kept as sticky (no pod holds its cache yet)
            rule = headers["x-brunoise-pick-rule"]
            assert rule in PICK_RULES and (t > 0 or rule != "sticky"), (t, rule)
            pods.append(pod)
        first_pods.add(pods[0])
        sticky += sum(1 for p in pods[1:] if p == pods[0])
        total += len(pods) - 1
    assert len(first_pods) >= 2, first_pods  # different sessions spread over the pods
    assert sticky / total >= 0.9, (sticky, total)


def test_prefix_hits_show_locality(cluster: Cluster) -> None:
    def hits_and_queries() -> tuple[float, float]:
        h = q = 0.0
        for pid in cluster.runtimes:
            text = scrape(cluster.pod_http(pid))
            h += metric_value(text, "vllm:prefix_cache_hits_total")
            q += metric_value(text, "vllm:prefix_cache_queries_total")
        return h, q

    h0, q0 = hits_and_queries()
    for s in range(6):
        sid = f"loc-{uuid.uuid4().hex[:8]}"
        turns: list[str] = []
        for t in range(4):
            turns.append(f"session {sid} turn {t}: " + "context words " * 20)
            status, _, _ = post(cluster.http(s % 2) + "/v1/chat/completions", chat_body(turns), {"x-session-id": sid})
            assert status == 200
    h1, q1 = hits_and_queries()
    ratio = (h1 - h0) / max(1.0, q1 - q0)
    print(f"prefix hit ratio with session routing: {ratio:.2f} ({h1 - h0:.0f}/{q1 - q0:.0f} tokens)")
    assert ratio >= 0.5, ratio


def test_requests_without_key_group_by_prefix(cluster: Cluster) -> None:
    shared = "Shared few-shot preamble for prefix routing. " * 12
    pods: collections.Counter[str] = collections.Counter()
    for i in range(8):
        status, headers, _ = post(
            cluster.http(i % 2) + "/v1/completions",
            {"model": MODEL, "prompt": shared + f"question {i}", "max_tokens": 2},
        )
        assert status == 200
        pods[headers["x-brunoise-pod"]] += 1
        # both routers must see the finished request as finished (its load report may lag), so that
        # the next pick is decided by the prefix, not by a stale in-flight count
        for r in range(2):
            wait_until(
                lambda r=r: all(p["outstanding"] == 0 for p in http_json(cluster.http(r) + "/debug/pods")["pods"]),
                10,
                f"router {r} sees every pod idle",
            )
    assert pods.most_common(1)[0][1] >= 7, pods


def test_fresh_ids_over_a_shared_document_stay_together(cluster: Cluster) -> None:
    """Failure mode: each query over a shared document carries a new id, so keyed by id alone they scatter the
    document over every pod. Grouped keys put them in the document's group: one subset, one warm pod."""
    doc = "A shared contract under review, clause by clause, for the grouped-key test. " * 30
    pods: collections.Counter[str] = collections.Counter()
    keys = set()
    for i in range(8):
        sid = f"doc-{uuid.uuid4().hex[:8]}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": doc + f"\nQuestion {i}: who signs?"}],
                "max_tokens": 2}  # fmt: skip
        keys.add(routed_key(body, {"x-session-id": sid}) >> 32)
        status, headers, _ = post(cluster.http(i % 2) + "/v1/chat/completions", body, {"x-session-id": sid})
        assert status == 200 and headers["x-brunoise-pick"] == "in_subset"
        pods[headers["x-brunoise-pod"]] += 1
        for r in range(2):  # as above: the next pick sees the finished request as finished
            wait_until(
                lambda r=r: all(p["outstanding"] == 0 for p in http_json(cluster.http(r) + "/debug/pods")["pods"]),
                10,
                f"router {r} sees every pod idle",
            )
    assert len(keys) == 1  # one group
    assert pods.most_common(1)[0][1] >= 7, pods


def test_a_tenants_sessions_share_the_tenants_subset(cluster: Cluster) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    lo = group_range(tenant).lo
    subset = cluster.subset(lo)
    assert subset == cluster.subset(lo + 0xFFFFFFFF)  # the group's whole range lies in one slice
    for i in range(6):
        sid = f"t-{uuid.uuid4().hex[:8]}"
        status, headers, _ = post(
            cluster.http(i % 2) + "/v1/chat/completions", chat_body([f"hello {i}"]), {"x-session-id": sid,
            "x-tenant-id": tenant},
        )  # fmt: skip
        assert status == 200 and headers["x-brunoise-pod"] in subset


def test_two_routers_agree_on_fresh_keys(cluster: Cluster) -> None:
    agree = 0
    for _i in range(10):
        sid = f"agree-{uuid.uuid4().hex[:8]}"
        body = {"model": MODEL, "prompt": f"fresh prompt {sid} " * 8, "max_tokens": 2}
        _, h0, _ = post(cluster.http(0) + "/v1/completions", body, {"x-session-id": sid})
        _, h1, _ = post(cluster.http(1) + "/v1/completions", body, {"x-session-id": sid})
        agree += h0["x-brunoise-pod"] == h1["x-brunoise-pod"]
    assert agree >= 9, agree


async def test_openai_client_streams_chat_and_completions(cluster: Cluster) -> None:
    client = openai.AsyncOpenAI(base_url=cluster.http(0) + "/v1", api_key="unused", max_retries=0)
    try:
        models = [m.id async for m in client.models.list()]
        assert MODEL in models
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-session-id": "openai-1"},
        )  # fmt: skip
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text and usage is not None and usage.completion_tokens == 5
        cstream = await client.completions.create(model=MODEL, prompt="once upon a time", max_tokens=4, stream=True)
        pieces = [c.choices[0].text async for c in cstream if c.choices]
        assert "".join(pieces)
        full = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert full.usage is not None and full.usage.completion_tokens == 3 and full.choices[0].message.content
        comp = await client.completions.create(model=MODEL, prompt="abc", max_tokens=3, user="u-42")
        assert comp.usage is not None and comp.usage.completion_tokens == 3
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    finally:
        await client.close()


async def test_grpc_generate_health_reflection(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.grpc(1)) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="brunoise.v1.Router"))
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        stub = router_stub(ch)
        req = inference_pb2.GenerateRequest(
            model=MODEL,
            routing_key="grpc-s1",
            prompt="tell me a story",
            sampling=inference_pb2.SamplingParams(max_tokens=6),
            request_id="g-1",
        )
        call = stub.Generate(req, timeout=10)
        chunks = [c async for c in call]
        assert chunks and chunks[-1].usage.completion_tokens == 6 and chunks[-1].finish_reason == "length"
        trailers = dict(await call.trailing_metadata() or ())
        assert trailers["x-brunoise-pod"] == chunks[0].pod_id and trailers["x-brunoise-pick"] == "in_subset"
        assert trailers["x-brunoise-pick-rule"] in PICK_RULES, trailers
        assert "".join(c.text for c in chunks)
        assert all(c.pod_id == chunks[0].pod_id for c in chunks) and chunks[0].pod_id in cluster.subset("grpc-s1", 1)
        chat = inference_pb2.GenerateRequest(
            model=MODEL,
            messages=inference_pb2.ChatMessages(messages=[inference_pb2.ChatMessage(role="user", content="hi")]),
            sampling=inference_pb2.SamplingParams(max_tokens=2),
        )
        assert [c async for c in stub.Generate(chat, timeout=10)]
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def one() -> list[str]:
            call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for r in call:
                return [s.name for s in r.list_services_response.service]
            return []

        assert "brunoise.v1.Router" in await one()


async def test_grpc_bad_input_statuses(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.grpc(0)) as ch:
        stub = router_stub(ch)
        cases = [
            (inference_pb2.GenerateRequest(prompt="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (inference_pb2.GenerateRequest(model=MODEL), grpc.StatusCode.INVALID_ARGUMENT),
            (
                inference_pb2.GenerateRequest(
                    model=MODEL, prompt="x", sampling=inference_pb2.SamplingParams(max_tokens=-5)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (inference_pb2.GenerateRequest(model="nope", prompt="x"), grpc.StatusCode.NOT_FOUND),
            (
                inference_pb2.GenerateRequest(model=MODEL, prompt="x", labels={"region": "mars"}),
                grpc.StatusCode.UNAVAILABLE,
            ),
            (
                inference_pb2.GenerateRequest(model=MODEL, prompt="x", labels={"bad key": "v"}),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for req, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in stub.Generate(req, timeout=10):
                    pass
            assert ei.value.code() == code, (req, ei.value)
        # an expired deadline
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.Generate(inference_pb2.GenerateRequest(model=MODEL, prompt="x"), timeout=0.000001):
                pass
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # a deadline shorter than the generation: honoured (not a hang, not a late success)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.Generate(
                inference_pb2.GenerateRequest(
                    model=MODEL, prompt="x", sampling=inference_pb2.SamplingParams(max_tokens=2000)
                ),
                timeout=0.3,
            ):
                pass
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_idempotency_key_never_runs_twice_concurrently(cluster: Cluster) -> None:
    rid = f"idem-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"model": MODEL, "prompt": "a long one", "max_tokens": 400, "stream": True}).encode()
    hdrs = {"content-type": "application/json", "x-request-id": rid}
    async with (
        aiohttp.ClientSession() as s,
        s.post(cluster.http(0) + "/v1/completions", data=body, headers=hdrs) as first,
    ):
        assert first.status == 200
        await first.content.readline()  # streaming has started
        async with s.post(
            cluster.http(0) + "/v1/completions",
            data=body,
            headers={"content-type": "application/json", "x-request-id": rid},
        ) as second:
            assert second.status == 409
            err = await second.json()
            assert err["error"]["code"] == "request_in_flight"
        async with grpc.aio.insecure_channel(cluster.grpc(0)) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in router_stub(ch).Generate(
                    inference_pb2.GenerateRequest(model=MODEL, prompt="x", request_id=rid), timeout=5
                ):
                    pass
            assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # once the router has seen the first one end (the client went away), the id may be used again
    wait_until(
        lambda: (
            post(
                cluster.http(0) + "/v1/completions",
                {"model": MODEL, "prompt": "x", "max_tokens": 1},
                {"x-request-id": rid},
            )[0]
            == 200
        ),
        10,
        "the id to be free",
    )


def test_models_health_metrics_and_traceparent(cluster: Cluster) -> None:
    assert [m["id"] for m in http_json(cluster.http(1) + "/v1/models")["data"]] == [MODEL]
    assert http_json(cluster.http(1) + "/health")["status"] == "ok"
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    status, _, _ = post(
        cluster.http(1) + "/v1/completions", {"model": MODEL, "prompt": "traced", "max_tokens": 1}, {"traceparent": tp}
    )
    assert status == 200
    text = scrape(cluster.http(1))
    for name in ("brunoise_router_requests_total", "brunoise_router_ttft_seconds_bucket", "brunoise_router_latency_seconds_bucket",
                 "brunoise_router_picks_total", "brunoise_router_pod_inflight", "brunoise_router_assignment_generation",
                 "brunoise_router_assignment_staleness_seconds", "brunoise_router_knob"):  # fmt: skip
        assert name in text, name
    assert metric_value(text, "brunoise_router_picks_total", {"reason": "in_subset"}) > 0
    assert metric_value(text, "brunoise_router_assignment_generation") >= 1


async def test_concurrent_burst_of_misses_spreads(cluster: Cluster) -> None:
    """No session key, all different prompts, all at once: the misses must not all land on one pod."""
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> str:
            body = {"model": MODEL, "prompt": f"distinct burst prompt number {i} " * 6, "max_tokens": 8}
            async with s.post(cluster.http(0) + "/v1/completions", json=body) as r:
                assert r.status == 200
                return r.headers["x-brunoise-pod"]

        pods = collections.Counter(await asyncio.gather(*(one(i) for i in range(30))))
    assert len(pods) == 3 and max(pods.values()) <= 20, pods
