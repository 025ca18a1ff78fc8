"""Router API keys: the keys file (sha256 of a key -> name, tenant), held hashed, checked in constant time."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from axon_router.errors import Unauthorized

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """Who a key belongs to; ``tenant`` (when set) is the routing group of every request made with the key."""

    name: str
    tenant: str | None = None


def hash_key(key: str) -> str:
    """The keys file's form of an API key: the hex sha256 of its UTF-8 bytes (``printf %s KEY | sha256sum``)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` value (None when absent or another scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeys:
    """The known keys, by digest. ``check`` compares a presented key's digest with every known one in constant
    time (no early exit), so the answer's timing says nothing about which digests exist."""

    def __init__(self, keys: Mapping[str, ApiKey]) -> None:
        if not keys:
            raise ValueError("an API keys file must hold at least one key")
        self._digests = [(bytes.fromhex(d), k) for d, k in keys.items()]

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def parse(cls, data: Any, source: str = "the keys file") -> ApiKeys:
        """Keys from a mapping ``{sha256-hex: {name, tenant?}}`` (optionally under a top-level ``keys``)."""
        if isinstance(data, Mapping) and set(data) == {"keys"}:
            data = data["keys"]
        if not isinstance(data, Mapping) or not data:
            raise ValueError(f"{source} must map sha256 hex digests of keys to {{name, tenant}}")
        keys: dict[str, ApiKey] = {}
        for digest, entry in data.items():
            d = str(digest).lower().removeprefix("sha256:")
            if not _HEX64.match(d):
                raise ValueError(f"{source}: {str(digest)[:80]!r} is not the hex sha256 of a key (64 hex digits)")
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ValueError(f"{source}: the entry of {d[:12]}... needs a non-empty string name")
            tenant = entry.get("tenant")
            if tenant is not None and (not isinstance(tenant, str) or not _TENANT.match(tenant)):
                raise ValueError(
                    f"{source}: tenant of {entry['name']!r} must be 1..128 characters of [A-Za-z0-9._/-], got {tenant!r}"
                )
            keys[d] = ApiKey(entry["name"], tenant or None)
        return cls(keys)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> ApiKeys:
        """Keys from a JSON or YAML file (by extension; ``.json`` is JSON, anything else YAML, a superset)."""
        p = pathlib.Path(path)
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
        return cls.parse(data, str(p))

    def check(self, authorization: str | None) -> ApiKey:
        """The owner of the ``Authorization: Bearer KEY`` value; Unauthorized (401 / UNAUTHENTICATED) otherwise."""
        key = bearer(authorization)
        if key is None:
            raise Unauthorized("no API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        for digest, owner in self._digests:
            if hmac.compare_digest(presented, digest):
                found = owner
        if found is None:
            raise Unauthorized("incorrect API key provided", code="invalid_api_key")
        return found
