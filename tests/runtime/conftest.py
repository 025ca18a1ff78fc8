"""Fixtures for the runtime suite: one real runtime process per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sharder.launch import ManagedProcess
from tests.runtime.procs import start_runtime


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
