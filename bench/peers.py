"""Starting the peer routers (vllm-router, sglang-router) in front of a pool of runtimes, bound to 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import aiohttp

from sharder.launch import LaunchError, ManagedProcess

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The virtual environment scripts/setup_peers.sh installs the peers into (override with BRUNOISE_PEERS_VENV).
PEERS_VENV = pathlib.Path(os.environ.get("BRUNOISE_PEERS_VENV", str(ROOT / ".venv-peers")))


@dataclasses.dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer router configuration: which program and which policy."""

    name: str
    program: str  # "vllm-router" | "sglang-router"
    policy: str
    #: Routes by the prompt's cached prefix (the verdict's TTFT bar is the best of these).
    cache_aware: bool = False


#: The peers compared by default (round robin is vllm-router's plain ``round_robin`` policy).
PEERS: dict[str, PeerSpec] = {
    "round_robin": PeerSpec("round_robin", "vllm-router", "round_robin"),
    "vllm_cache_aware": PeerSpec("vllm_cache_aware", "vllm-router", "cache_aware", cache_aware=True),
    "vllm_consistent_hash": PeerSpec("vllm_consistent_hash", "vllm-router", "consistent_hash"),
    "sglang_cache_aware": PeerSpec("sglang_cache_aware", "sglang-router", "cache_aware", cache_aware=True),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peers_available() -> dict[str, str]:
    """Program name -> why it is missing, for each peer program that cannot be started (empty: all present)."""
    missing: dict[str, str] = {}
    if not (PEERS_VENV / "bin" / "vllm-router").exists():
        missing["vllm-router"] = f"{PEERS_VENV}/bin/vllm-router not found: run scripts/setup_peers.sh"
    if not (PEERS_VENV / "bin" / "python").exists() or not any(
        (PEERS_VENV / "lib").glob("python3*/site-packages/sglang_router")
    ):
        missing["sglang-router"] = f"sglang_router not installed in {PEERS_VENV}: run scripts/setup_peers.sh"
    return missing


def peer_argv(spec: PeerSpec, worker_urls: Sequence[str], port: int, metrics_port: int) -> list[str]:
    """The command line of ``spec`` serving on 127.0.0.1:``port`` with ``worker_urls`` as its workers.

    Both peers check worker health every second (as brunoise's pods report every second), so a restarted pod is
    seen again as quickly by every router; their Prometheus endpoints are bound to loopback as well.
    """
    common = [
        "--host", "127.0.0.1", "--port", str(port), "--policy", spec.policy,
        "--worker-urls", *worker_urls,
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        "--health-check-interval-secs", "1",
        "--worker-startup-timeout-secs", "60",
        "--worker-startup-check-interval", "1",
    ]  # fmt: skip
    if spec.program == "vllm-router":
        return [str(PEERS_VENV / "bin" / "vllm-router"), *common, "--log-level", "warning"]
    if spec.program == "sglang-router":
        return [str(PEERS_VENV / "bin" / "python"), "-m", "sglang_router.launch_router", *common, "--log-level", "warn"]
    raise ValueError(f"unknown peer program {spec.program!r}; use vllm-router or sglang-router")


def wait_http(url: str, proc: ManagedProcess, timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers 200 (raise with the log tail if the process dies or time runs out)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LaunchError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise LaunchError(f"{proc.name}: {url} not ready after {timeout_s:.0f}s ({last}):\n{proc.log_tail()}")


def start_peer(
    spec: PeerSpec, worker_urls: Sequence[str], *, log_dir: str | os.PathLike[str], timeout_s: float = 60.0
) -> tuple[ManagedProcess, str]:
    """Start the peer router and wait until it routes; returns the process and its base URL."""
    port = free_port()
    argv = peer_argv(spec, worker_urls, port, free_port())
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    proc = ManagedProcess(f"peer-{spec.name}", argv, env=env, log_dir=log_dir, ready_file=False).start()
    base = f"http://127.0.0.1:{port}"
    try:
        # /v1/models is forwarded to a worker: 200 means the router is up and has a healthy worker.
        wait_http(f"{base}/v1/models", proc, timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc, base


async def remove_worker(spec: PeerSpec, base: str, worker_url: str, session: aiohttp.ClientSession) -> None:
    """Take ``worker_url`` out of the peer's rotation through its admin API (the peers' own drain)."""
    timeout = aiohttp.ClientTimeout(total=5.0)
    if spec.program == "vllm-router":
        async with session.post(f"{base}/remove_worker", params={"url": worker_url}, timeout=timeout) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"{spec.name}: remove_worker {worker_url}: HTTP {resp.status} {await resp.text()}")
        return
    async with session.get(f"{base}/workers", timeout=timeout) as resp:
        workers = (await resp.json())["workers"]
    ids = [w["id"] for w in workers if w.get("url") == worker_url]
    for wid in ids:
        async with session.delete(f"{base}/workers/{wid}", timeout=timeout) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"{spec.name}: DELETE /workers/{wid}: HTTP {resp.status} {await resp.text()}")


async def add_worker(
    spec: PeerSpec, base: str, worker_url: str, session: aiohttp.ClientSession, timeout_s: float = 10.0
) -> None:
    """Put ``worker_url`` back into the peer's rotation and wait until the peer lists it (healthy, for sglang)."""
    timeout = aiohttp.ClientTimeout(total=5.0)
    if spec.program == "vllm-router":
        async with session.post(f"{base}/add_worker", params={"url": worker_url}, timeout=timeout) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"{spec.name}: add_worker {worker_url}: HTTP {resp.status} {await resp.text()}")
        return
    async with session.post(f"{base}/workers", json={"url": worker_url}, timeout=timeout) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"{spec.name}: POST /workers {worker_url}: HTTP {resp.status} {await resp.text()}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with session.get(f"{base}/workers", timeout=timeout) as resp:
            workers = (await resp.json())["workers"]
        if any(w.get("url") == worker_url and w.get("is_healthy") for w in workers):
            return
        await asyncio.sleep(0.1)
