"""A process that starts children stops every one of them by PID when SIGTERM unwinds it, even if a second
SIGTERM arrives while its ``finally`` blocks run (``timeout`` forwards its own, a supervisor repeats it)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

from sharder.launch import ManagedProcess, ProcessGroup
from tests.runtime.procs import alive, runtime_env

#: The parent: starts a child that sleeps, says both PIDs, and on SIGTERM unwinds through a ``finally`` that
#: waits for a line on stdin (the test sends its second SIGTERM then) before it stops the child.
PARENT = textwrap.dedent(
    """
    import sys, time
    from sharder.launch import ManagedProcess, ProcessGroup, sigterm_unwinds

    group = ProcessGroup()
    with sigterm_unwinds(lambda signum: SystemExit(128 + signum)):
        try:
            child = group.add(ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"],
                                             ready_file=False).start())
            print("up", child.pid, flush=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            print("unwinding", flush=True)
            sys.stdin.readline()
            group.stop_together(timeout_s=5.0)
            print("stopped", flush=True)
    """
)


def test_a_second_sigterm_during_the_unwinding_leaves_no_child_running() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=runtime_env(),
    )  # fmt: skip
    assert parent.stdin is not None and parent.stdout is not None
    child_pid = 0
    try:
        line = parent.stdout.readline().split()
        assert line[:1] == ["up"], f"parent did not start its child: {line} {parent.stderr.read() if parent.stderr else ''}"
        child_pid = int(line[1])
        parent.send_signal(signal.SIGTERM)
        assert parent.stdout.readline().strip() == "unwinding"
        parent.send_signal(signal.SIGTERM)  # while the finally block runs
        parent.stdin.write("go\n")
        parent.stdin.flush()
        rest = parent.stdout.read()
        code = parent.wait(timeout=30)
        assert "stopped" in rest, f"the unwinding was cut short (exit {code})"
        assert code == 128 + signal.SIGTERM
        assert not alive(child_pid), "the parent's child is still running"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if child_pid and alive(child_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)


def test_stop_together_stops_every_process_of_the_group_also_one_that_ignores_sigterm() -> None:
    group = ProcessGroup()
    # ready once it ignores SIGTERM (its ready file written after the handler is set)
    stubborn = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[sys.argv.index('--ready-file') + 1]).write_text('{}'); time.sleep(120)"
    )
    procs = [
        group.add(ManagedProcess("p0", [sys.executable, "-c", "import time; time.sleep(120)"], ready_file=False).start()),
        group.add(ManagedProcess("p1", [sys.executable, "-c", stubborn]).start()),
        group.add(ManagedProcess("p2", [sys.executable, "-c", "import time; time.sleep(120)"], ready_file=False).start()),
    ]
    try:
        procs[1].wait_ready(timeout_s=30.0)
        assert all(p.alive() for p in procs)
        group.stop_together(timeout_s=2.0)
        assert not any(p.alive() for p in procs)
        assert procs[1].proc is not None and procs[1].proc.returncode == -signal.SIGKILL
    finally:
        group.stop_all()

