"""Router request-path defects, each reproduced against a real router (HTTP + gRPC on 127.0.0.1) over a scripted pod."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import aiohttp
import grpc
import pytest

from axon_router.knobs import Knobs
from brunoise_api.v1 import inference_pb2, router_pb2_grpc
from tests.router.hardening_support import MODEL, TARGET, harness, raw_socket
from tests.waiting import until

FAST = Knobs(health_interval_s=0.2, retry_backoff_s=0.001, first_token_timeout_s=5.0)


def knobs(**kw: Any) -> Knobs:
    return dataclasses.replace(FAST, **kw)


async def post(base: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base + "/v1/completions", data=data, headers={"content-type": "application/json", **(headers or {})}
        ) as r,
    ):
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


def assert_openai_error(raw: bytes, code: str | None = None) -> dict[str, Any]:
    err = json.loads(raw)["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


# ------------------------------------------------------------------------------------------------ finding 4
async def test_grpc_cancel_before_first_token_releases_the_request_id() -> None:
    async with harness(knobs()) as h, grpc.aio.insecure_channel(h.grpc) as ch:
        assert h.router is not None
        stub = router_pb2_grpc.RouterStub(ch)  # type: ignore[no-untyped-call]
        req = inference_pb2.GenerateRequest(model=MODEL, prompt="stall-first", request_id="rid-1")
        call = stub.Generate(req)
        await asyncio.wait_for(h.pod.received.wait(), 5)
        assert "rid-1" in h.router.inflight_ids
        call.cancel()
        await until(lambda: not h.router.inflight_ids, 5, "the cancelled request's id to be released")
        h.pod.release.set()
        again = stub.Generate(inference_pb2.GenerateRequest(model=MODEL, prompt="hello", request_id="rid-1"))
        chunks = [c async for c in again]
        assert chunks and chunks[-1].finish_reason == "stop"
        text = h.router.metrics.render().decode()
        labels = f'code="CANCELLED",frontend="grpc",model="{MODEL}",target="{TARGET}"'
        assert f"brunoise_router_requests_total{{{labels}}} 1.0" in text


# ------------------------------------------------------------------------------------------------ finding 5
async def test_pod_stalling_mid_stream_gets_an_sse_error_and_frees_the_id() -> None:
    async with harness(knobs(stream_idle_timeout_s=0.5)) as h:
        assert h.router is not None
        body = {"model": MODEL, "prompt": "stall-mid", "stream": True}
        t = time.monotonic()
        status, _, raw = await post(h.http, body, {"x-request-id": "rid-2"})
        took = time.monotonic() - t
        assert status == 200
        events = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["text"] == "a"
        err = json.loads(events[-1])["error"]
        assert err["code"] == "upstream_idle_timeout", err
        assert took < 4.0, took
        assert not h.router.inflight_ids
        h.pod.release.set()
        status, _, raw = await post(h.http, {"model": MODEL, "prompt": "hi", "stream": True}, {"x-request-id": "rid-2"})
        assert status == 200 and b"[DONE]" in raw


async def test_pod_stalling_in_a_non_stream_body_gets_504() -> None:
    async with harness(knobs(stream_idle_timeout_s=0.5)) as h:
        t = time.monotonic()
        status, _, raw = await post(h.http, {"model": MODEL, "prompt": "stall-body"}, {"x-request-id": "rid-3"})
        assert status == 504, raw
        assert_openai_error(raw, "upstream_idle_timeout")
        assert time.monotonic() - t < 4.0
        assert h.router is not None and not h.router.inflight_ids


async def test_grpc_stream_stalling_mid_stream_is_aborted_quickly() -> None:
    async with harness(knobs(stream_idle_timeout_s=0.5)) as h, grpc.aio.insecure_channel(h.grpc) as ch:
        stub = router_pb2_grpc.RouterStub(ch)  # type: ignore[no-untyped-call]
        call = stub.Generate(inference_pb2.GenerateRequest(model=MODEL, prompt="stall-mid"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            _ = [c async for c in call]
        assert ei.value.code() is grpc.StatusCode.ABORTED, ei.value
        assert "sent nothing for" in (ei.value.details() or "")


async def test_connections_per_pod_are_bounded() -> None:
    async with harness(knobs(pool_max_per_pod=2, first_token_timeout_s=1.0, max_attempts=1)) as h:
        body = {"model": MODEL, "prompt": "stall-first", "stream": True}
        results = await asyncio.gather(*(post(h.http, body) for _ in range(5)))
        assert h.pod.max_open_conns == 2, h.pod.max_open_conns
        assert all(s >= 500 for s, _, _ in results)  # every one timed out waiting; none opened a 3rd connection


# ------------------------------------------------------------------------------------------------ finding 6
async def test_lone_surrogate_in_a_prompt_is_an_openai_400() -> None:
    async with harness(knobs()) as h:
        raw_body = b'{"model": "m", "prompt": "h\\ud800i"}'
        status, headers, raw = await post(h.http, raw_body)
        assert status == 400, raw
        assert headers["content-type"].startswith("application/json")
        err = assert_openai_error(raw, "invalid_encoding")
        assert err["param"] == "prompt"
        chat = b'{"model": "m", "messages": [{"role": "user", "content": "x\\udfff"}]}'
        async with aiohttp.ClientSession() as s, s.post(h.http + "/v1/chat/completions", data=chat) as r:
            assert r.status == 400
            assert_openai_error(await r.read(), "invalid_encoding")


# ------------------------------------------------------------------------------------------------ finding 8
async def test_prompt_over_the_slo_on_an_idle_pod_is_not_shed() -> None:
    """A prompt no idle pod could prefill within the SLO is not an overload: the pod decides (vLLM's 400)."""
    async with harness(knobs(admit_ttft_slo_s=0.05)) as h:
        status, headers, raw = await post(h.http, {"model": MODEL, "prompt": "too-long" + "x" * 20000})
        assert status == 400, (status, raw[:200])
        assert "retry-after" not in headers
        assert "maximum context length" in json.loads(raw)["error"]["message"]
        # a small prompt is served
        status, _, _ = await post(h.http, {"model": MODEL, "prompt": "hello"})
        assert status == 200


async def test_32kb_header_gets_an_openai_json_400() -> None:
    async with harness(knobs()) as h:
        status, headers, raw = await post(h.http, {"model": MODEL, "prompt": "x"}, {"x-session-id": "s" * 32768})
        assert status == 400
        assert headers["content-type"].startswith("application/json"), headers
        assert_openai_error(raw)


async def test_slowloris_headers_are_cut_off() -> None:
    async with harness(knobs(header_read_timeout_s=0.5)) as h:
        host, port = h.host_port
        s = raw_socket(host, port)
        try:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            t = time.monotonic()
            got = await asyncio.to_thread(s.recv, 65536)
            took = time.monotonic() - t
        finally:
            s.close()
        assert took < 5.0, took
        if got:  # a 408 with an OpenAI body before the close
            assert got.startswith(b"HTTP/1.1 408"), got[:100]
            assert_openai_error(got.split(b"\r\n\r\n", 1)[1], "header_timeout")


async def test_slow_body_gets_408() -> None:
    async with harness(knobs(body_read_timeout_s=0.5)) as h:
        host, port = h.host_port
        s = raw_socket(host, port)
        try:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"model": '
            )
            t = time.monotonic()
            got = await asyncio.to_thread(s.recv, 65536)
            took = time.monotonic() - t
        finally:
            s.close()
        assert took < 5.0
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert_openai_error(got.split(b"\r\n\r\n", 1)[1], "body_timeout")


async def test_garbage_grpc_is_invalid_argument() -> None:
    async with harness(knobs()) as h, grpc.aio.insecure_channel(h.grpc) as ch:
        call = ch.unary_stream("/brunoise.v1.Router/Generate", request_serializer=None, response_deserializer=None)
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05\xff\xfe\xfd\xfc\xfb", b"\x12\x80"):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [c async for c in call(garbage, timeout=5)]
            assert ei.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (garbage, ei.value)
            assert "Exception" not in (ei.value.details() or "") and "class" not in (ei.value.details() or "")


async def test_huge_model_names_are_not_echoed_whole() -> None:
    async with harness(knobs()) as h:
        status, _, raw = await post(h.http, {"model": "z" * 1_000_000, "prompt": "x"})
        assert status == 404
        assert len(raw) < 4096, len(raw)
        assert_openai_error(raw, "model_not_found")
    async with harness(knobs()) as h, grpc.aio.insecure_channel(h.grpc) as ch:
        stub = router_pb2_grpc.RouterStub(ch)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            _ = [c async for c in stub.Generate(inference_pb2.GenerateRequest(model="z" * 1_000_000, prompt="x"))]
        assert ei.value.code() is grpc.StatusCode.NOT_FOUND
        assert len(ei.value.details() or "") < 4096


async def test_router_without_an_assignment_answers_a_retryable_503() -> None:
    async with harness(knobs(), assigned=False) as h:
        status, headers, raw = await post(h.http, {"model": MODEL, "prompt": "x"})
        assert status == 503, raw
        assert int(headers["retry-after"]) >= 1
        assert_openai_error(raw, "no_assignment")
        async with grpc.aio.insecure_channel(h.grpc) as ch:
            stub = router_pb2_grpc.RouterStub(ch)  # type: ignore[no-untyped-call]
            call = stub.Generate(inference_pb2.GenerateRequest(model=MODEL, prompt="x"))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [c async for c in call]
            assert ei.value.code() is grpc.StatusCode.UNAVAILABLE
            trailers = dict(ei.value.trailing_metadata() or ())
            assert int(trailers["retry-after"]) >= 1


def test_admission_admits_a_request_over_the_slo_even_when_idle_but_sheds_real_overload() -> None:
    """Pure: shedding is for load. A request no idle pod could serve within the SLO goes to the best pod under
    the outstanding limit; when every pod is at that limit it is still shed."""
    from axon_router.admission import Admission, Outcome, Priority
    from axon_router.cost import PickInput
    from axon_router.pick import CostPick
    from axon_router.pod_view import PodView

    k = knobs(admit_ttft_slo_s=0.05, admit_max_outstanding=2)
    a, policy = Admission(k), CostPick(k)
    pods = {"a": PodView("a", "http://a"), "b": PodView("b", "http://b")}
    huge = PickInput(1, [], prompt_tokens=100_000, max_tokens=16)
    small = PickInput(1, [], prompt_tokens=10, max_tokens=16)
    d = a.decide(policy, ["a"], ["b"], pods, huge, 0.0, Priority.INTERACTIVE)
    assert d.outcome is Outcome.IN_SUBSET and d.pick is not None and d.pick.pod.id == "a"
    for p in pods.values():
        p.begin(10)
        p.begin(10)  # both at admit_max_outstanding
    assert a.decide(policy, ["a"], ["b"], pods, huge, 0.0, Priority.INTERACTIVE).outcome is Outcome.SHED
    assert a.decide(policy, ["a"], ["b"], pods, small, 0.0, Priority.INTERACTIVE).outcome is Outcome.SHED


async def test_http_client_gone_before_first_token_releases_the_request_id() -> None:
    async with harness(knobs()) as h:
        assert h.router is not None
        host, port = h.host_port
        body = json.dumps({"model": MODEL, "prompt": "stall-first", "stream": True}).encode()
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-request-id: rid-9\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await asyncio.wait_for(h.pod.received.wait(), 5)
        assert "rid-9" in h.router.inflight_ids
        writer.close()  # the client goes away while the pod has not answered
        await until(lambda: not h.router.inflight_ids, 5, "the abandoned request's id to be released")
        text = h.router.metrics.render().decode()
        labels = f'code="499",frontend="http",model="{MODEL}",target="{TARGET}"'
        assert f"brunoise_router_requests_total{{{labels}}} 1.0" in text


async def test_idle_watch_counts_only_time_spent_waiting_on_the_pod() -> None:
    """The watch fires on a read that waits longer than idle_s, not on slow work between reads (a slow client)."""
    from axon_router.errors import UpstreamIdle
    from axon_router.forward import IdleWatch

    class FakeResponse:
        def __init__(self) -> None:
            self.pending: asyncio.Future[bytes] | None = None
            self.closed = False

        def close(self) -> None:  # as aiohttp: a read pending on a closed response fails
            self.closed = True
            if self.pending is not None and not self.pending.done():
                self.pending.set_exception(aiohttp.ClientPayloadError("response closed"))

        def read(self, delay: float | None) -> asyncio.Future[bytes]:
            loop = asyncio.get_running_loop()
            self.pending = loop.create_future()
            if delay is not None:
                loop.call_later(delay, lambda f=self.pending: f.done() or f.set_result(b"x"))
            return self.pending

    resp = FakeResponse()
    watch = IdleWatch(resp, 0.2)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            assert await watch.read(resp.read(0.05)) == b"x"
            await asyncio.sleep(0.3)  # longer than idle_s, but not waiting on the pod
        assert not resp.closed
        t = time.monotonic()
        with pytest.raises(UpstreamIdle):
            await watch.read(resp.read(None))  # the pod goes silent
        assert resp.closed and 0.15 < time.monotonic() - t < 2.0
    finally:
        watch.stop()


async def test_a_clients_tight_deadline_does_not_count_against_the_pod() -> None:
    """A first token that misses the client's own deadline is not the pod's failure: its circuit stays closed."""
    async with harness(knobs(outlier_consecutive_failures=2)) as h:
        body = {"model": MODEL, "prompt": "stall-first", "stream": True}
        for _ in range(4):
            status, _, raw = await post(h.http, body, {"x-brunoise-timeout-ms": "100"})
            assert status == 504, raw
        h.pod.release.set()
        status, _, raw = await post(h.http, {"model": MODEL, "prompt": "hello"})
        assert status == 200, raw
        assert h.router is not None and h.router.pods["p0"].breaker.state.name.lower() == "closed"


async def test_a_session_lives_on_its_pod_from_dispatch_until_an_attempt_fails() -> None:
    """Failure mode (agentic, restart phase): the router counted a session on the pod it was sent to only once its
    first token came back, so during a long prefill that pod still looked roomy and ``kv_room`` sent a second and
    a third crowded pod's session there within 0.6 s (29k tokens), where they evicted each other."""
    async with harness(knobs(max_attempts=1)) as h:
        assert h.router is not None
        view = h.router.table.pods["p0"]
        session = {"x-session-id": "agent-1"}
        task = asyncio.create_task(post(h.http, {"model": MODEL, "prompt": "stall-first " + "x" * 4096}, session))
        await asyncio.wait_for(h.pod.received.wait(), 5)
        assert view.inflight == 1 and view.prefill_reqs == 1  # sent, no first token yet
        sizes = view.resident_sizes()
        assert len(sizes) == 1 and sizes[0][1] == view.resident_chunks() > 0, sizes
        key = sizes[0][0]
        h.pod.release.set()
        status, _, _ = await task
        assert status == 200 and [k for k, _, _ in view.resident_sizes()] == [key]
        # an attempt that ends before its first token (vLLM refuses the prompt): that session does not live there
        status, _, raw = await post(h.http, {"model": MODEL, "prompt": "too-long " + "y" * 4096}, {"x-session-id": "b"})
        assert status == 400, raw
        assert [k for k, _, _ in view.resident_sizes()] == [key]
