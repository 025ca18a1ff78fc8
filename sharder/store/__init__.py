"""Store backends behind one interface: embedded (default, one machine) and etcd (Raft); ``open_store`` picks one."""

from __future__ import annotations

from typing import Any

from sharder.store.base import LeaderInfo, Store, StoreError, StoreUnavailable, Versioned

__all__ = ["STORE_KINDS", "LeaderInfo", "Store", "StoreError", "StoreUnavailable", "Versioned", "open_store"]

STORE_KINDS = ("embedded", "etcd")


def open_store(kind: str, **opts: Any) -> Store:
    """A new, not yet started store of ``kind``; ``opts`` go to its constructor.

    ``open_store("embedded", snapshot_path=None, history_limit=100, clock=time.monotonic, watch_buffer=64)``
    ``open_store("etcd", endpoints=["127.0.0.1:2379"] or "a:1,b:2", prefix="/brunoise", history_limit=100,
    request_timeout_s=2.0, deadline_s=6.0, max_backoff_s=0.5, ping_timeout_s=1.0)``
    Call ``await store.start()`` before use and ``await store.close()`` after.
    """
    if kind == "embedded":
        from sharder.store.embedded import EmbeddedStore

        return EmbeddedStore(**opts)
    if kind == "etcd":
        from sharder.store.etcd import EtcdStore

        endpoints = opts.pop("endpoints", None)
        if isinstance(endpoints, str):
            endpoints = [e for e in (p.strip() for p in endpoints.split(",")) if e]
        if not endpoints:
            raise ValueError("the etcd store needs endpoints (host:port, comma separated)")
        return EtcdStore(list(endpoints), **opts)
    raise ValueError(f"unknown store kind {kind!r}: use one of {', '.join(STORE_KINDS)}")
