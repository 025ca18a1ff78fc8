"""A runtime process against hostile clients: malformed HTTP, slow headers and bodies, huge echoes, garbage gRPC."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sharder.launch import ManagedProcess
from tests.runtime.procs import start_runtime

EXTRA: tuple[str, ...] = ("--header-timeout-s", "0.5", "--body-timeout-s", "0.5")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_runtime(
        tmp_path_factory.mktemp("runtime-hardening"),
        "--pod-id", "pod-h", "--time-scale", "20", "--max-model-len", "2048",
        *EXTRA,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


def _conn(proc: ManagedProcess) -> socket.socket:
    u = urllib.parse.urlsplit(proc.addresses["http"])
    return socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=10)


def _exchange(proc: ManagedProcess, data: bytes) -> tuple[bytes, float]:
    s = _conn(proc)
    try:
        s.sendall(data)
        t = time.monotonic()
        got = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            got += part
            if b"\r\n\r\n" in got:
                head, _, body = got.partition(b"\r\n\r\n")
                n = next(
                    (int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")),
                    None,
                )
                if n is not None and len(body) >= n:
                    break
        return got, time.monotonic() - t
    finally:
        s.close()


def _vllm_error(raw: bytes) -> dict[str, object]:
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["object"] == "error" and body["message"] and body["error"]["message"], body
    return dict(body)


def test_oversized_header_gets_a_json_400(guarded: ManagedProcess) -> None:
    req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 32768 + b"\r\nContent-Length: 2\r\n\r\n{}"
    got, _ = _exchange(guarded, req)
    assert got.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", got[:100]
    assert b"application/json" in got.split(b"\r\n\r\n", 1)[0]
    assert _vllm_error(got)["code"] == 400


def test_slow_headers_are_cut_off(guarded: ManagedProcess) -> None:
    got, took = _exchange(guarded, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert took < 5.0, took
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:100]


def test_slow_body_gets_408(guarded: ManagedProcess) -> None:
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    got, took = _exchange(guarded, head + b'{"model": ')
    assert took < 5.0, took
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert _vllm_error(got)["code"] == 408


def test_huge_model_name_is_not_echoed_whole(guarded: ManagedProcess) -> None:
    body = json.dumps({"model": "z" * 1_000_000, "prompt": "x"}).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    s = _conn(guarded)
    try:
        s.sendall(head.encode() + body)
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 20:
            part = s.recv(65536)
            if not part:
                break
            got += part
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 404"), got[:100]
    assert len(got) < 4096, len(got)


async def test_garbage_grpc_is_invalid_argument(guarded: ManagedProcess) -> None:
    async with grpc.aio.insecure_channel(guarded.addresses["grpc"]) as ch:
        call = ch.unary_stream("/brunoise.v1.Runtime/Generate", request_serializer=None, response_deserializer=None)
        for garbage in (b"\xff\xff\xff\xff", b"\x22\x05\xff\xfe\xfd\xfc\xfb"):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [c async for c in call(garbage, timeout=5)]
            assert ei.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (garbage, ei.value)
        stub_call = ch.unary_stream(
            "/brunoise.v1.Runtime/Generate", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            _ = [c async for c in stub_call(b"\x12" + bytes([200, 1]) + b"z" * 200, timeout=5)]
        assert ei.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert len(ei.value.details() or "") < 1024
    assert guarded.alive()


def test_runtime_help_names_the_timeouts(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "runtime.main", "--help"], capture_output=True, text=True, timeout=60)
    assert "--header-timeout-s" in out.stdout and "--body-timeout-s" in out.stdout
