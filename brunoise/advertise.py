"""Bind vs advertise: the address a server tells others (ready files, reports) when it binds a wildcard host."""

from __future__ import annotations

import ipaddress
import socket

WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def primary_address() -> str:
    """This host's primary IPv4 address: the source address of its default route (no packet is sent);
    127.0.0.1 when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr: str = s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return addr


def advertise_host(bind_host: str, advertise: str | None = None) -> str:
    """The host to advertise: ``advertise`` when given, else the bind host when it is concrete, else the host's
    primary address."""
    if advertise:
        return advertise
    if bind_host not in WILDCARDS:
        return bind_host
    return primary_address()


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal bracketed."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"
