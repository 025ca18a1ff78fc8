"""Fuzz of a runtime's surfaces with the router fuzz's inputs: HTTP never a 5xx (vLLM-shaped errors), gRPC
Generate never UNKNOWN or INTERNAL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from brunoise_api.v1 import inference_pb2
from sharder.launch import ManagedProcess
from tests.fuzz.test_fuzz_router_grpc import _BAD, _corrupted, _requests
from tests.fuzz.test_fuzz_router_http import _adversarial, _body
from tests.router.conftest import MODEL, post
from tests.runtime.procs import start_runtime

pytestmark = pytest.mark.slow
_VALID = {"model": json.dumps(MODEL), "prompt": '"hello there"', "max_tokens": "2"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_runtime(tmp_path_factory.mktemp("fuzz-runtime"), "--model", MODEL, "--time-scale", "50")
    try:
        yield proc
    finally:
        proc.stop()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/tokenize"]),
    fields=st.builds(lambda base, over: {**base, **over}, st.sampled_from([_VALID, _VALID, {}]), _adversarial),
)
def test_fuzz_runtime_http_bodies_never_5xx(runtime: ManagedProcess, path: str, fields: dict[str, str]) -> None:
    status, headers, raw = post(runtime.addresses["http"] + path, _body(fields), timeout=30)
    event(str(status))
    assert status < 500, (status, raw[:300])
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), (status, raw[:200])
        body = json.loads(raw)
        assert body["error"]["message"] and len(raw) < 16384, raw[:200]
    assert runtime.alive()


_GRPC_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _generate(runtime: ManagedProcess, payload: bytes) -> None:
    with grpc.insecure_channel(runtime.addresses["grpc"]) as ch:
        call = ch.unary_stream("/brunoise.v1.Runtime/Generate", request_serializer=None, response_deserializer=None)
        try:
            for _ in call(payload, timeout=10):
                pass
            event("OK")
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            event(code.name)
            assert code not in _BAD, (code, e.details(), payload[:200])  # type: ignore[attr-defined]


@_GRPC_SETTINGS
@given(req=_requests())
def test_fuzz_runtime_grpc_fields_never_unknown_or_internal(
    runtime: ManagedProcess, req: inference_pb2.GenerateRequest
) -> None:
    _generate(runtime, req.SerializeToString())
    assert runtime.alive()


@_GRPC_SETTINGS
@given(raw=_corrupted())
def test_fuzz_runtime_grpc_wire_bytes_never_unknown_or_internal(runtime: ManagedProcess, raw: bytes) -> None:
    _generate(runtime, raw)
    assert runtime.alive()
