"""Fixtures for the runtime suite: repo root on sys.path, and one real runtime process per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # plain `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, ROOT)

from brunoise.launch import ManagedProcess  # noqa: E402
from tests.runtime.procs import start_runtime  # noqa: E402


@pytest.fixture(scope="module")
def runtime_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A simulated-engine runtime at 20x speed, with a small body limit (64 KiB) and context (2048 tokens)."""
    proc = start_runtime(
        tmp_path_factory.mktemp("runtime"),
        "--pod-id", "pod-test", "--target", "t1", "--labels", "region=eu",
        "--time-scale", "20", "--max-body-bytes", "65536", "--max-model-len", "2048",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()
