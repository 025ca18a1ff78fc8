"""Entry point of the `brunoise` CLI (a typer app): admin commands and `cluster up`."""

from __future__ import annotations

import enum
import importlib.metadata
import os
import sys
from typing import Annotated

import typer
from typer._completion_classes import completion_init
from typer._completion_shared import get_completion_script

from brunoise.cli import admin, simulate
from brunoise.cli.cluster import cluster_app
from brunoise.cli.credentials import credentials_app
from brunoise.cli.output import print_error
from brunoise.cli.quarantine import quarantine_app
from brunoise.cli.quota import quota_app
from brunoise.cli.rollout import rollout_app
from brunoise.cli.targets import register as register_targets
from brunoise.cli.tenant import tenant_app

#: what the completion script sets to ask the CLI itself for candidates (click's convention: _PROG_COMPLETE)
COMPLETE_VAR = "_BRUNOISE_COMPLETE"


class Shell(enum.StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion_script(shell: str) -> str:
    """The script that makes ``shell`` complete ``brunoise``'s commands and options (typer's own completion)."""
    return get_completion_script(prog_name="brunoise", complete_var=COMPLETE_VAR, shell=shell)


completion_init()  # typer's completion classes answer $_BRUNOISE_COMPLETE (its --install-completion is off)

app = typer.Typer(
    name="brunoise",
    help="brunoise: sessions on small, load-balanced subsets of LLM replicas. "
    "Start a local cluster with `brunoise cluster up`; inspect and steer it with the other commands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def package_version() -> str:
    """The installed brunoise distribution's version (package metadata)."""
    try:
        return importlib.metadata.version("brunoise")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"brunoise {package_version()}")
        raise typer.Exit(0)


@app.callback()
def _credentials(
    token: str = typer.Option(None, "--token", envvar="BRUNOISE_TOKEN", show_envvar=True,
                              help="admin bearer token (default: the running `cluster up`'s)"),
    tls_ca: str = typer.Option(None, "--tls-ca", envvar="BRUNOISE_TLS_CA", show_envvar=True,
                               help="CA certificate (PEM) the assigner's TLS certificate is checked against"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the installed version and exit"),
) -> None:
    """Global options: how the CLI authenticates to the assigner (flags, else env, else the cluster file)."""
    if token:
        os.environ["BRUNOISE_TOKEN"] = token
    if tls_ca:
        os.environ["BRUNOISE_TLS_CA"] = tls_ca


@app.command()
def completion(shell: Annotated[Shell, typer.Argument(help="the shell to complete in")]) -> None:
    """Print the shell completion script: `eval "$(brunoise completion bash)"` (zsh likewise; fish:
    `brunoise completion fish | source`), or save it where the shell loads completions from."""
    typer.echo(completion_script(shell.value))


admin.register(app)
register_targets(app)
simulate.register(app)
app.add_typer(cluster_app, name="cluster")
app.add_typer(credentials_app, name="credentials")
app.add_typer(quota_app, name="quota")
app.add_typer(rollout_app, name="rollout")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(tenant_app, name="tenant")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; anything unexpected is one line on stderr, never a traceback."""
    try:
        app(args=argv, prog_name="brunoise")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print_error(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
