"""Fuzz of the router's gRPC Generate: random and adversarial fields, corrupted wire bytes.

No answer is UNKNOWN or INTERNAL (every refusal says what was wrong), and the router still serves after.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from brunoise_api.v1 import inference_pb2, router_pb2_grpc
from tests.router.conftest import MODEL, Cluster

pytestmark = pytest.mark.slow

T = TypeVar("T")
_BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
_big_text = st.integers(1, 100_000).map(lambda n: "y" * n)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 1.0, -1.0])
_sampling = st.builds(
    inference_pb2.SamplingParams,
    max_tokens=st.sampled_from([0, 1, 2, -1, -(2**63), 2**63 - 1, 1 << 24, 10**9]),
    temperature=_floats,
    top_p=_floats,
    stop=st.lists(_text, max_size=3),
    seed=st.integers(0, 2**64 - 1),
    ignore_eos=st.booleans(),
)
_HELLO = inference_pb2.ChatMessages(messages=[inference_pb2.ChatMessage(role="user", content="hello there")])
_SHORT = inference_pb2.SamplingParams(max_tokens=2, temperature=0.0)
_messages = st.builds(
    inference_pb2.ChatMessages,
    messages=st.lists(st.builds(inference_pb2.ChatMessage, role=_text, content=_text | _big_text), max_size=3),
)


def _mostly(valid: st.SearchStrategy[T], adversarial: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``valid`` four times in five: each request has a few adversarial fields, so most reach a pod."""
    return st.sampled_from([False, False, False, False, True]).flatmap(lambda bad: adversarial if bad else valid)


@st.composite
def _requests(draw: st.DrawFn) -> inference_pb2.GenerateRequest:
    r = inference_pb2.GenerateRequest(
        model=draw(_mostly(st.just(MODEL), st.just("") | _text | _big_text)),
        target=draw(_mostly(st.sampled_from(["", "chat"]), _text)),
        routing_key=draw(_mostly(st.just(""), _text | _big_text)),
        request_id=draw(_mostly(st.just(""), _text)),
        priority=draw(_mostly(st.sampled_from([0, 1, 2]), st.sampled_from([3, -5, 2**31 - 1]))),  # type: ignore[arg-type]
        labels=draw(_mostly(st.just({}), st.dictionaries(_text, _text, max_size=3))),
        deadline_ms=draw(_mostly(st.just(0), st.sampled_from([1, 50, 2**32 - 1]))),
    )
    which = draw(_mostly(st.sampled_from(["prompt", "messages"]), st.just("none")))
    if which == "prompt":
        r.prompt = draw(_mostly(st.just("hello there"), _text | _big_text))
    elif which == "messages":
        r.messages.CopyFrom(draw(_mostly(st.just(_HELLO), _messages)))
    r.sampling.CopyFrom(draw(_mostly(st.just(_SHORT), _sampling)))
    if 0 <= r.sampling.max_tokens <= 1 << 20:  # bounded run time: generations of in-range lengths stay short
        r.sampling.max_tokens = min(r.sampling.max_tokens, 2) or 2
    return r


@st.composite
def _corrupted(draw: st.DrawFn) -> bytes:
    """A valid request's wire bytes with a few bytes replaced, cut, or random bytes altogether."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    raw = bytearray(draw(_requests()).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw)


def _call(addr: str, fn: str, payload: object, record: bool = True) -> grpc.StatusCode:
    with grpc.insecure_channel(addr) as ch:
        if fn == "raw":
            call = ch.unary_stream("/brunoise.v1.Router/Generate", request_serializer=None, response_deserializer=None)
        else:
            call = router_pb2_grpc.RouterStub(ch).Generate  # type: ignore[no-untyped-call]
        try:
            for _ in call(payload, timeout=10):
                pass
        except grpc.RpcError as e:
            code: grpc.StatusCode = e.code()  # type: ignore[attr-defined]
            assert code not in _BAD, (code, e.details(), payload if fn == "raw" else str(payload)[:300])  # type: ignore[attr-defined]
            if record:
                event(code.name)
            return code
    if record:
        event("OK")
    return grpc.StatusCode.OK


_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(req=_requests())
def test_fuzz_grpc_fields_never_unknown_or_internal(fuzz_cluster: Cluster, req: inference_pb2.GenerateRequest) -> None:
    _call(fuzz_cluster.grpc(0), "stub", req)


@_SETTINGS
@given(raw=_corrupted())
def test_fuzz_grpc_wire_bytes_never_unknown_or_internal(fuzz_cluster: Cluster, raw: bytes) -> None:
    _call(fuzz_cluster.grpc(0), "raw", raw)


def test_router_grpc_still_serves_after_the_fuzz(fuzz_cluster: Cluster) -> None:
    req = inference_pb2.GenerateRequest(model=MODEL, prompt="hi", sampling=inference_pb2.SamplingParams(max_tokens=2))
    assert _call(fuzz_cluster.grpc(0), "stub", req, record=False) is grpc.StatusCode.OK
    assert all(p.alive() for p in fuzz_cluster.group.procs)
