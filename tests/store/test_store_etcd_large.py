"""The etcd store keeps assignments past etcd's 1.5 MiB request limit in chunk keys: written before the CAS,
read with it, and deleted with the history entry (or the failed write) that named them."""

from __future__ import annotations

import random

import pytest

from sharder.store.base import Versioned
from sharder.store.etcd import INLINE_MAX, EtcdStore
from tests.store.store_helpers import HISTORY_LIMIT

pytestmark = pytest.mark.etcd


async def chunk_keys(s: EtcdStore) -> list[bytes]:
    res = await s.client.get_prefix(s._chunk_prefix("t"), keys_only=True)
    return sorted(kv.key for kv in res)


async def test_chunks_live_as_long_as_their_history_entry(etcd_endpoints: list[str], etcd_prefix: str) -> None:
    s = EtcdStore(etcd_endpoints, prefix=etcd_prefix, history_limit=HISTORY_LIMIT)
    await s.start()
    try:
        rng = random.Random(15)
        gens = [Versioned("t", g, rng.randbytes(2 * INLINE_MAX + g)) for g in range(1, 2 * HISTORY_LIMIT + 1)]
        for prev, new in zip([None, *gens], gens, strict=False):
            assert await s.compare_and_swap("t", prev.generation if prev else 0, new)
        kept = await s.history("t")
        assert kept == gens[::-1][:HISTORY_LIMIT]
        keys = await chunk_keys(s)
        # incompressible 1.25 MiB values: two chunks each, for exactly the generations history keeps
        assert len(keys) == 2 * HISTORY_LIMIT
        assert {int(k.rsplit(b"/", 2)[1].split(b"-")[0]) for k in keys} == {v.generation for v in kept}
        # a CAS that conflicts leaves no chunks behind
        assert not await s.compare_and_swap("t", 1, Versioned("t", 999, rng.randbytes(2 * INLINE_MAX)))
        assert await chunk_keys(s) == keys
        assert await s.get("t") == gens[-1]
    finally:
        await s.close()
