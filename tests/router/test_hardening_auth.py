"""API keys on the router's OpenAI and gRPC surfaces: 401 shape, constant-time check, tenant override, bind refusal."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import aiohttp
import grpc
import pytest

from axon_router.auth import ApiKey, ApiKeys, bearer, hash_key
from axon_router.errors import Unauthorized
from axon_router.knobs import Knobs
from brunoise_api.v1 import inference_pb2, router_pb2_grpc
from tests.router.hardening_support import MODEL, harness

KEYS = ApiKeys.parse(
    {
        hash_key("sk-acme"): {"name": "acme-app", "tenant": "acme"},
        hash_key("sk-other"): {"name": "other-app", "tenant": "other"},
        hash_key("sk-plain"): {"name": "ops"},
    }
)
K = Knobs(health_interval_s=0.2)


def test_keys_file_parsing_and_check(tmp_path: pathlib.Path) -> None:
    assert KEYS.check("Bearer sk-acme") == ApiKey("acme-app", "acme")
    assert KEYS.check("bearer   sk-plain ") == ApiKey("ops", None)
    for bad in (None, "", "Bearer", "Basic sk-acme", "Bearer sk-acmE", "Bearer " + hash_key("sk-acme")):
        with pytest.raises(Unauthorized) as ei:
            KEYS.check(bad)
        assert ei.value.code == "invalid_api_key" and ei.value.status == 401
        assert "sk-" not in ei.value.message  # the presented key is never echoed
    assert bearer("Bearer abc") == "abc" and bearer("Token abc") is None
    y = tmp_path / "keys.yaml"
    y.write_text(f"keys:\n  {hash_key('k1')}:\n    name: one\n    tenant: t-1\n")
    assert ApiKeys.load(y).check("Bearer k1") == ApiKey("one", "t-1")
    j = tmp_path / "keys.json"
    j.write_text(json.dumps({"sha256:" + hash_key("k2").upper(): {"name": "two"}}))
    assert ApiKeys.load(j).check("Bearer k2").name == "two"
    for data in (
        {},
        {"nothex": {"name": "x"}},
        {hash_key("a"): {"tenant": "t"}},
        {hash_key("a"): {"name": "x", "tenant": "a b"}},
    ):
        with pytest.raises(ValueError):
            ApiKeys.parse(data)


async def _post(base: str, path: str, body: object, headers: dict[str, str]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(base + path, json=body, headers=headers) as r:
        return r.status, await r.read()


async def test_http_requires_a_known_key_and_answers_openai_401() -> None:
    async with harness(K, api_keys=KEYS) as h, aiohttp.ClientSession() as s:
        body = {"model": MODEL, "prompt": "hello"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-acme"}):
            async with s.post(h.http + "/v1/completions", json=body, headers=headers) as r:
                status, raw = r.status, await r.read()
                assert r.headers.get("WWW-Authenticate") == "Bearer"
            assert status == 401, raw
            err = json.loads(raw)["error"]
            assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key" and err["message"]
        async with s.get(h.http + "/v1/models") as r:
            assert r.status == 401
        async with s.get(h.http + "/debug/pods") as r:
            assert r.status == 401
        async with s.get(h.http + "/health") as r:  # probes and Prometheus stay open
            assert r.status == 200
        async with s.get(h.http + "/metrics") as r:
            assert r.status == 200
        async with s.get(h.http + "/v1/models", headers={"Authorization": "Bearer sk-plain"}) as r:
            assert r.status == 200 and MODEL in [m["id"] for m in (await r.json())["data"]]
        status, raw = await _post(h.http, "/v1/completions", body, {"Authorization": "Bearer sk-plain"})
        assert status == 200, raw


async def test_a_keys_tenant_replaces_the_client_tenant_header() -> None:
    """The pod sees the routing key the router chose: a client cannot route into another tenant's group."""
    async with harness(K, api_keys=KEYS) as h:
        body = {"model": MODEL, "prompt": "hello there"}
        seen: list[str] = []
        for auth, tenant in (("sk-acme", None), ("sk-acme", "other"), ("sk-other", None), ("sk-plain", "acme")):
            headers = {"Authorization": f"Bearer {auth}"} | ({"x-tenant-id": tenant} if tenant else {})
            status, raw = await _post(h.http, "/v1/completions", body, headers)
            assert status == 200, raw
            seen.append(h.pod.headers[-1]["x-brunoise-slice-key"])
        acme, acme_spoofing_other, other, plain_claiming_acme = seen
        assert acme_spoofing_other == acme  # the key's tenant wins over the header
        assert other != acme
        assert plain_claiming_acme == acme  # a key without a tenant leaves the client's header alone


async def test_grpc_requires_a_bearer_key() -> None:
    async with harness(K, api_keys=KEYS) as h, grpc.aio.insecure_channel(h.grpc) as ch:
        stub = router_pb2_grpc.RouterStub(ch)  # type: ignore[no-untyped-call]
        req = inference_pb2.GenerateRequest(model=MODEL, prompt="hello")
        for md in ((), (("authorization", "Bearer nope"),)):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [c async for c in stub.Generate(req, metadata=md)]
            assert ei.value.code() is grpc.StatusCode.UNAUTHENTICATED
        chunks = [c async for c in stub.Generate(req, metadata=(("authorization", "Bearer sk-acme"),))]
        assert chunks[-1].finish_reason == "stop"


def _router(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "axon_router.main",
        "--assigner",
        "127.0.0.1:1",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
    ]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


def test_non_loopback_router_without_keys_refuses_to_start(tmp_path: pathlib.Path) -> None:
    r = _router("--host", "0.0.0.0")
    assert r.returncode != 0
    assert "refusing to serve 0.0.0.0 without API keys" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"abc": {"name": "x"}}')
    r = _router("--host", "127.0.0.1", "--api-keys-file", str(bad))
    assert r.returncode != 0 and "cannot use --api-keys-file" in r.stderr
