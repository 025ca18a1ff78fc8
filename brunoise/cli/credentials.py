"""`brunoise credentials init`: a CA, a server certificate and one token per role / per pod, for a deployment."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Annotated

import typer

from brunoise.cli.output import console
from sharder.security.tls import generate_tls
from sharder.security.tokens import Role, credentials_doc, new_token

credentials_app = typer.Typer(help="Make the assigner's TLS certificate and tokens (secure by default).",
                              no_args_is_help=True)  # fmt: skip


def init_credentials(
    directory: pathlib.Path, hosts: list[str], pods: list[str], *, admins: tuple[str, ...] = ("admin",),
    readers: tuple[str, ...] = ("router",),
) -> bool:  # fmt: skip
    """Write ``pki/{ca,server}.pem``, ``pki/server.key``, ``credentials.json`` (digests) and ``tokens/<name>``
    (one file per principal) under ``directory``. Does nothing and returns False when credentials.json exists,
    so a restarted deployment keeps its tokens."""
    creds = directory / "credentials.json"
    if creds.exists():
        return False
    generate_tls(directory / "pki", hosts)
    entries: dict[str, tuple[Role, str, str]] = {}
    for name in admins:
        entries[name] = (Role.ADMIN, "", new_token())
    for name in readers:
        entries[name] = (Role.READER, "", new_token())
    for pod in pods:
        entries[pod] = (Role.POD, pod, new_token())
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    for name, (_, _, tok) in entries.items():
        fd = os.open(tokens / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(tok + "\n")
    tmp = creds.with_suffix(".tmp")
    tmp.write_text(json.dumps(credentials_doc(entries), indent=1))
    os.replace(tmp, creds)  # last: its presence means everything above is complete
    return True


@credentials_app.command("init")
def init(
    directory: Annotated[pathlib.Path, typer.Option("--dir", help="where to write them")],
    host: Annotated[list[str], typer.Option("--host", help="a name or IP the assigners are reached by")] = [],  # noqa: B006
    pod: Annotated[list[str], typer.Option("--pod", help="a pod id to make a pod token for")] = [],  # noqa: B006
) -> None:
    """Create credentials under --dir unless they exist (idempotent)."""
    hosts = ["127.0.0.1", "localhost", *host]
    made = init_credentials(directory, hosts, pod)
    console().print(f"{'created' if made else 'kept existing'} credentials in {directory}")
