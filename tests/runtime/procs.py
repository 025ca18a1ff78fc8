"""Starting real runtime and assigner processes for tests (``python -m runtime.main``, an embedded-store
assigner), each stopped by PID."""

from __future__ import annotations

import os
from pathlib import Path

from sharder.launch import ManagedProcess, python_module

ROOT = str(Path(__file__).resolve().parents[2])


def runtime_env() -> dict[str, str]:
    """This environment with the repo root on PYTHONPATH (the package need not be installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_runtime(tmp: Path, *args: str, name: str = "runtime") -> ManagedProcess:
    """Start ``python -m runtime.main`` with ``args`` and wait for its ready file (stopped again on failure)."""
    proc = ManagedProcess(name, python_module("runtime.main", *args), env=runtime_env(), log_dir=tmp)
    proc.start()
    try:
        proc.wait_ready(timeout_s=30)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_assigner(tmp: Path, target: str = "chat=m", round_interval_s: float = 0.3) -> ManagedProcess:
    """Start an assigner on the embedded store (any free port) for ``target`` ("name=model"); the caller waits
    for it (``wait_ready``) and stops it."""
    argv = python_module(
        "sharder.assigner.main", "--store", "embedded", "--port", "0", "--round-interval", str(round_interval_s),
        "--target", target,
    )  # fmt: skip
    return ManagedProcess("assigner", argv, env=runtime_env(), log_dir=tmp).start()
