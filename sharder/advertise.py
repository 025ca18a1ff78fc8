"""Bind addresses: whether a host is loopback, and the address a server tells others (ready files, reports) when
it binds a wildcard host."""

from __future__ import annotations

import ipaddress
import socket

WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def primary_address() -> str:
    """This host's primary address: what its own host name resolves to (a container's pod IP); 127.0.0.1 when
    the name does not resolve."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind host) is a loopback address or ``localhost``: servers refuse anything else without
    credentials unless told ``--insecure``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def advertise_host(bind_host: str, advertise: str | None = None) -> str:
    """The host to advertise: ``advertise`` when given, else the bind host when it is concrete, else the host's
    primary address."""
    if advertise:
        return advertise
    if bind_host not in WILDCARDS:
        return bind_host
    return primary_address()


def address_host(address: str) -> str:
    """The host of a ``host:port`` address (an IPv6 literal unbracketed): the inverse of ``host_port``."""
    host = address.rpartition(":")[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal bracketed."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"
