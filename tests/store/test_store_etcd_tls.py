"""The etcd store's TLS pass-through, against a real etcd member serving its client port over TLS."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from sharder.etcd_server import EtcdNotFound, find_etcd_binary, free_ports
from sharder.launch import ManagedProcess
from sharder.security.tls import TlsFiles, generate_tls
from sharder.store.base import LeaderInfo, Versioned
from sharder.store.etcd import EtcdStore
from tests.waiting import until

pytestmark = pytest.mark.etcd


@pytest.fixture
def tls_etcd(tmp_path: pathlib.Path) -> Iterator[tuple[str, TlsFiles]]:
    try:
        binary = find_etcd_binary()
    except EtcdNotFound as e:
        pytest.skip(str(e))
    tls = generate_tls(tmp_path / "pki", ("127.0.0.1", "localhost"))
    client, peer = free_ports(2)
    argv = [
        binary, "--name", "tls0", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", f"https://127.0.0.1:{client}", "--advertise-client-urls", f"https://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls0=http://127.0.0.1:{peer}",
        "--cert-file", str(tls.cert), "--key-file", str(tls.key), "--unsafe-no-fsync",
    ]  # fmt: skip
    proc = ManagedProcess("etcd-tls", argv, log_dir=tmp_path / "log", ready_file=False).start()
    try:
        yield f"127.0.0.1:{client}", tls
    finally:
        proc.stop()


async def test_etcd_store_over_tls(tls_etcd: tuple[str, TlsFiles]) -> None:
    endpoint, tls = tls_etcd
    s = EtcdStore([endpoint], prefix="/tls", ca_cert=str(tls.ca))
    plain = EtcdStore([endpoint], prefix="/tls", ping_timeout_s=0.5)
    await s.start()
    await plain.start()
    try:
        await until(s.ping, 20, "the TLS client to reach the TLS member", interval_s=0.1)
        assert await s.campaign(LeaderInfo("a", "127.0.0.1:1"), ttl_s=10)
        assert await s.compare_and_swap("t", 0, Versioned("t", 1, b"over-tls"))
        got = await s.get("t")
        assert got is not None and got.data == b"over-tls"
        assert not await plain.ping(), "a plaintext client cannot talk to the TLS member"
    finally:
        await s.close()
        await plain.close()


def test_client_certificate_needs_a_ca() -> None:
    with pytest.raises(ValueError, match="ca_cert"):
        EtcdStore(["127.0.0.1:2379"], cert_cert="c.pem", cert_key="k.pem")
