"""Fuzz fixtures: one real cluster (embedded assigner, 3 sim runtimes, 1 router), stopped by PID at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.router.conftest import Cluster


@pytest.fixture(scope="session")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cl = Cluster(tmp_path_factory.mktemp("fuzz-cluster"), n_routers=1, runtime_args=("--time-scale", "20"))
    try:
        cl.start()
        yield cl
    finally:
        cl.close()
        assert not [p.name for p in cl.group.procs if p.alive()], "a child outlived close()"
