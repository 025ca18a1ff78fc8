"""Starting local server processes, waiting on their ready files, and stopping them by PID."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType


class LaunchError(RuntimeError):
    """A process exited or did not become ready in time."""


class ManagedProcess:
    """One child process started by us. ``addresses`` holds what it wrote to its ready file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        ready_file: bool = True,
    ) -> None:
        self.name = name
        self._tmp = pathlib.Path(log_dir) if log_dir else pathlib.Path(tempfile.mkdtemp(prefix=f"brunoise-{name}-"))
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.ready_path = self._tmp / f"{name}.ready.json"
        self.log_path = self._tmp / f"{name}.log"
        self.argv = list(argv) + (["--ready-file", str(self.ready_path)] if ready_file else [])
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, str] = {}

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise LaunchError(f"{self.name} was not started")
        return self.proc.pid

    def start(self) -> ManagedProcess:
        with contextlib.suppress(FileNotFoundError):
            self.ready_path.unlink()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        finally:
            log.close()
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, str]:
        """Poll for the ready file until ``timeout_s``; raise with the log tail if the child died or timed out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LaunchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready_path.exists():
                try:
                    self.addresses = json.loads(self.ready_path.read_text())
                    return self.addresses
                except json.JSONDecodeError:
                    pass  # written atomically by the child, but be lenient with a partial read
            time.sleep(0.02)
        raise LaunchError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process (and its process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM the process group, without waiting (``stop`` waits, then SIGKILLs)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        # children that left the group are still ours: make sure the group is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


class ProcessGroup:
    """Several managed processes stopped together (in reverse start order) on exit."""

    def __init__(self) -> None:
        self.procs: list[ManagedProcess] = []

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def stop_together(self, timeout_s: float = 10.0) -> None:
        """Stop every process at once: SIGTERM to each one's process group (newest first), then wait for them
        together until ``timeout_s`` and SIGKILL what is left. No threads, so it also works while the
        interpreter shuts down (a thread pool refuses work then, and the processes behind it were left running)."""
        procs = [p for p in reversed(self.procs) if p.alive()]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.stop(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_all()


@contextlib.contextmanager
def sigterm_unwinds(make_exc: Callable[[int], BaseException]) -> Iterator[None]:
    """Inside the block, SIGTERM raises ``make_exc(signum)`` (SystemExit, KeyboardInterrupt) so the ``finally``
    blocks stop every child by PID, as Ctrl-C does; SIGTERMs after the first are ignored until the block ends:
    one arriving while those blocks run (``timeout`` forwards its own SIGTERM to its child, a supervisor
    repeats it) cut them short and left children running."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise make_exc(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def write_ready_file(path: str | os.PathLike[str], addresses: Mapping[str, str]) -> None:
    """Atomically write a server's bound addresses (the child side of the ready-file convention)."""
    p = pathlib.Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(addresses)))
    os.replace(tmp, p)
