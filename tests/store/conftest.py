"""Fixtures for the store suite: one behavioural contract run against the embedded and the etcd backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sharder.store.base import Store
from sharder.store.embedded import EmbeddedStore
from sharder.store.etcd import EtcdStore
from tests.etcd_plugin import etcd_cluster, etcd_endpoints, etcd_prefix, make_etcd_cluster  # noqa: F401
from tests.store.store_helpers import HISTORY_LIMIT, Backend, FakeClock


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
