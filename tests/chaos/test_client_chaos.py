"""Clients that open streams and never read them, alongside a steady load: they must not hold anything once gone."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable

import pytest

from tests.chaos.conftest import ChaosCluster, Scenario
from tests.router.conftest import MODEL, http_json
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MAX_GAP_S = 1.5
READERS = 8
#: Long enough to be still generating when the clients vanish (about 18 s of simulated decode).
LONG_TOKENS = 3000
#: Routers and pods must drop a vanished client's stream within this long.
MAX_RELEASE_S = 5.0


async def _open_never_read(url: str, key: str, headers: dict[str, str]) -> socket.socket:
    """Send a streaming completion on a socket with a tiny receive buffer, and never read from it."""
    u = urllib.parse.urlsplit(url)
    assert u.hostname is not None and u.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (u.hostname, u.port))
    body = json.dumps({"model": MODEL, "prompt": f"{key} never read " * 8, "max_tokens": LONG_TOKENS, "stream": True,
                       "ignore_eos": True}).encode()  # fmt: skip
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nx-session-id: {key}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()  # fmt: skip
    await loop.sock_sendall(sock, head + body)
    return sock


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a crashed client's kernel would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _router_inflight(cl: ChaosCluster) -> int:
    return sum(p["inflight"] for i in range(len(cl.routers))
               for p in http_json(cl.http(i) + "/debug/pods", headers=cl.api_headers)["pods"])  # fmt: skip


def _pods_running(cl: ChaosCluster) -> int:
    total = 0
    for pid in cl.runtimes:
        eng = http_json(cl.pod_http(pid) + "/load?cache=0")["engine"]
        total += int(eng["running"]) + int(eng["waiting"])
    return total


async def test_clients_that_never_read(
    make_cluster: Callable[..., ChaosCluster], scenario: Callable[..., Scenario]
) -> None:
    cl = make_cluster()
    sc = await scenario(cl, "clients-never-read").begin()
    socks = [await _open_never_read(cl.http(i % 2), f"mute-{i}", cl.api_headers) for i in range(READERS)]
    try:
        sc.fault()
        await sc.load.run_for(3.0)  # the load shares routers and pods with the stuck streams
        await sc.stop()
        held = await asyncio.to_thread(_router_inflight, cl)
        running = await asyncio.to_thread(_pods_running, cl)
    finally:
        for s in socks:
            _abort(s)
    t0 = time.monotonic()
    await asyncio.to_thread(wait_until, lambda: _router_inflight(cl) == 0 and _pods_running(cl) == 0, 20,
                            "routers and pods to drop the vanished clients' streams")  # fmt: skip
    release_s = time.monotonic() - t0
    await sc.finish(max_gap_s=MAX_GAP_S, failover_s=release_s, mute_streams=READERS, router_inflight_held=held,
                    pod_requests_held=running)  # fmt: skip
    assert held >= READERS, f"the routers held {held} streams, expected the {READERS} unread ones"
    assert release_s < MAX_RELEASE_S, f"released {release_s:.1f}s after the clients vanished"
