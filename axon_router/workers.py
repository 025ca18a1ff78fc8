"""``brunoise-router --workers N``: N router processes on the same ports (SO_REUSEPORT), each with its own clerk.

The supervisor reserves the HTTP and gRPC ports (a bound, non-listening SO_REUSEPORT socket each, so port 0
resolves once for every worker), starts the workers as this program with ``--workers 1 --reuse-port`` on those
ports, writes the ready file once every worker is serving, passes SIGTERM/SIGINT on (each worker drains as a
single router does) and exits when they have, with the first non-zero exit code. The kernel spreads new
connections over the listening workers; a worker that exits takes the others down with it (a supervisor of
processes, e.g. the container runtime, restarts the whole router).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from sharder.launch import write_ready_file


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on ``host``:``port`` (0: a free port); it takes no
    connections, only holds the port for the workers."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    s = socket.socket(family, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(addr)
    return s


def worker_argv(argv: Sequence[str], http_port: int, grpc_port: int, ready_file: str) -> list[str]:
    """This program's command line for one worker: the same flags, the last occurrence of each overridden."""
    return [
        sys.executable, "-m", "axon_router.main", *argv, "--workers", "1", "--reuse-port",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--ready-file", ready_file,
    ]  # fmt: skip


def supervise(argv: Sequence[str], workers: int, host: str, http_port: int, grpc_port: int,
              ready_file: str | None, timeout_s: float = 120.0) -> int:  # fmt: skip
    """Run ``workers`` router processes on shared ports until a signal or a worker's exit; the exit code."""
    held = [reserve_port(host, http_port), reserve_port(host, grpc_port)]
    hp, gp = (s.getsockname()[1] for s in held)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="brunoise-router-workers-"))
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        for i in range(workers):
            procs.append(subprocess.Popen(worker_argv(argv, hp, gp, str(tmp / f"worker{i}.json"))))
        deadline = time.monotonic() + timeout_s
        pending = {i for i in range(workers)}
        addresses: dict[str, str] = {}
        while pending and not stopping:  # every worker serving before the router says it is
            for i in sorted(pending):
                if procs[i].poll() is not None:
                    raise SystemExit(f"brunoise-router: worker {i} exited with {procs[i].returncode} while starting")
                path = tmp / f"worker{i}.json"
                if path.exists():
                    with contextlib.suppress(json.JSONDecodeError):
                        addresses = json.loads(path.read_text())
                        pending.discard(i)
            if time.monotonic() > deadline:
                raise SystemExit(f"brunoise-router: workers {sorted(pending)} not serving after {timeout_s:.0f}s")
            time.sleep(0.05)
        for s in held:
            s.close()
        if ready_file and not stopping:
            write_ready_file(ready_file, {**addresses, "workers": str(workers)})
        code = 0
        while True:  # until every worker is gone; the first one to exit stops the rest
            live = [p for p in procs if p.poll() is None]
            if not live:
                break
            for p in procs:
                if p.returncode is not None and not stopping:
                    code = code or p.returncode or 1
                    forward(signal.SIGTERM, None)
            time.sleep(0.1)
        return code or next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=60)
            if p.poll() is None:
                p.kill()
        for s in held:
            s.close()
        for f in tmp.glob("*"):
            f.unlink()
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
