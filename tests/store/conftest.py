"""Fixtures for the store suite: one behavioural contract run against the embedded and the etcd backend."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # plain `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, _ROOT)

from sharder.store.base import Store  # noqa: E402
from sharder.store.embedded import EmbeddedStore  # noqa: E402
from sharder.store.etcd import EtcdStore  # noqa: E402
from tests.etcd_plugin import etcd_cluster, etcd_endpoints, etcd_prefix, make_etcd_cluster  # noqa: E402, F401
from tests.store.store_helpers import HISTORY_LIMIT, Backend, FakeClock  # noqa: E402


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        clock = FakeClock()
        emb = EmbeddedStore(history_limit=HISTORY_LIMIT, clock=clock, watch_buffer=16)
        await emb.start()

        async def another_embedded() -> Store:
            return emb.handle()

        b = Backend("embedded", emb, another_embedded, clock)
    else:
        endpoints: list[str] = request.getfixturevalue("etcd_endpoints")
        prefix: str = request.getfixturevalue("etcd_prefix")

        async def another_etcd() -> Store:
            s = EtcdStore(endpoints, prefix=prefix, history_limit=HISTORY_LIMIT)
            await s.start()
            return s

        b = Backend("etcd", await another_etcd(), another_etcd, None)
    try:
        yield b
    finally:
        await b.close()
