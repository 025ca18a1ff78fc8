"""Bearer tokens by role: the credentials file (sha256 digests only), principals and which RPC needs which role."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import os
import pathlib
import secrets
from collections.abc import Iterable, Mapping


class Role(enum.StrEnum):
    """What a token may do: ``admin`` every RPC; ``pod`` Report for its own pod id; ``reader`` Watch and reads."""

    ADMIN = "admin"
    POD = "pod"
    READER = "reader"


#: The roles allowed to call each Assigner RPC (an RPC missing here is refused to every role). Other services,
#: Health and reflection, are not checked.
ASSIGNER_RPC_ROLES: Mapping[str, frozenset[Role]] = {
    "Watch": frozenset({Role.READER, Role.ADMIN}),
    "GetAssignment": frozenset({Role.READER, Role.ADMIN}),
    "ExplainKey": frozenset({Role.READER, Role.ADMIN}),
    "History": frozenset({Role.READER, Role.ADMIN}),
    "ListTargets": frozenset({Role.READER, Role.ADMIN}),
    "ListPods": frozenset({Role.READER, Role.ADMIN}),
    "Report": frozenset({Role.POD}),
    "ConfigureTarget": frozenset({Role.ADMIN}),
    "Drain": frozenset({Role.ADMIN, Role.POD}),  # a pod only itself (assigner.main.check_drain): graceful shutdown
    "SetOverride": frozenset({Role.ADMIN}),
    "ClearOverrides": frozenset({Role.ADMIN}),
    "SetQuota": frozenset({Role.ADMIN}),
    "GetQuota": frozenset({Role.ADMIN}),
    "ListQuotas": frozenset({Role.ADMIN}),
    "AcquireAllotment": frozenset({Role.READER, Role.ADMIN}),
    "ReturnAllotment": frozenset({Role.READER, Role.ADMIN}),
    "ReportKeyFault": frozenset({Role.READER, Role.ADMIN}),
    "ListQuarantines": frozenset({Role.READER, Role.ADMIN}),
    "ClearQuarantine": frozenset({Role.ADMIN}),
    "StartRollout": frozenset({Role.ADMIN}),
    "ChangeRollout": frozenset({Role.ADMIN}),
    "ListRollouts": frozenset({Role.READER, Role.ADMIN}),
    "SetPlacement": frozenset({Role.ADMIN}),
    "ListPlacements": frozenset({Role.READER, Role.ADMIN}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a token speaks for. ``pod_id`` is set exactly for the pod role: the one pod it may register as."""

    name: str
    role: Role
    pod_id: str = ""

    def __str__(self) -> str:
        return f"{self.role.value}:{self.name}"


def hash_token(token: str) -> str:
    """The hex sha256 digest stored for ``token`` (the token itself is never stored by the assigner)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return secrets.token_urlsafe(32)


class Credentials:
    """The tokens an assigner accepts, held as sha256 digests.

    File format (JSON): ``{"tokens": [{"name": "ops", "role": "admin", "sha256": "<hex>"},
    {"name": "pod-1", "role": "pod", "pod_id": "pod-1", "sha256": "<hex>"}, ...]}``.
    """

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for digest, principal in entries:
            raw = bytes.fromhex(digest)
            if len(raw) != 32:
                raise ValueError(f"token {principal.name!r}: sha256 must be 64 hex digits")
            if (principal.role is Role.POD) != bool(principal.pod_id):
                raise ValueError(f"token {principal.name!r}: a pod token names exactly one pod_id, others none")
            self._entries.append((raw, principal))
        if not self._entries:
            raise ValueError("a credentials file must list at least one token")

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> Credentials:
        tokens = doc.get("tokens")
        if not isinstance(tokens, list):
            raise ValueError('credentials: expected {"tokens": [...]}')
        out: list[tuple[str, Principal]] = []
        for i, t in enumerate(tokens):
            if not isinstance(t, dict):
                raise ValueError(f"credentials: tokens[{i}] must be an object")
            try:
                role = Role(str(t["role"]))
                out.append((str(t["sha256"]), Principal(str(t.get("name", f"token{i}")), role, str(t.get("pod_id", "")))))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"credentials: tokens[{i}]: {exc}") from exc
        return cls(out)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Credentials:
        try:
            doc = json.loads(pathlib.Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read credentials file {path}: {exc}") from exc
        return cls.from_doc(doc)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, else None. Compares against every entry in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for raw, principal in self._entries:
            if hmac.compare_digest(raw, digest):
                found = principal
        return found


def credentials_doc(tokens: Mapping[str, tuple[Role, str, str]]) -> dict[str, object]:
    """The credentials file for ``{name: (role, pod_id, token)}`` (digests only)."""
    return {
        "tokens": [
            {"name": name, "role": role.value, **({"pod_id": pod} if pod else {}), "sha256": hash_token(tok)}
            for name, (role, pod, tok) in sorted(tokens.items())
        ]
    }
