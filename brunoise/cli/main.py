"""Entry point of the `brunoise` CLI (a typer app): admin commands and `cluster up`."""

from __future__ import annotations

import os
import sys

import typer

from brunoise.cli import admin, simulate
from brunoise.cli.cluster import cluster_app
from brunoise.cli.credentials import credentials_app
from brunoise.cli.output import print_error
from brunoise.cli.quarantine import quarantine_app
from brunoise.cli.quota import quota_app
from brunoise.cli.rollout import rollout_app
from brunoise.cli.targets import register as register_targets
from brunoise.cli.tenant import tenant_app

app = typer.Typer(
    name="brunoise",
    help="brunoise: sessions on small, load-balanced subsets of LLM replicas. "
    "Start a local cluster with `brunoise cluster up`; inspect and steer it with the other commands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _credentials(
    token: str = typer.Option(None, "--token", envvar="BRUNOISE_TOKEN", show_envvar=True,
                              help="admin bearer token (default: the running `cluster up`'s)"),
    tls_ca: str = typer.Option(None, "--tls-ca", envvar="BRUNOISE_TLS_CA", show_envvar=True,
                               help="CA certificate (PEM) the assigner's TLS certificate is checked against"),
) -> None:
    """Global options: how the CLI authenticates to the assigner (flags, else env, else the cluster file)."""
    if token:
        os.environ["BRUNOISE_TOKEN"] = token
    if tls_ca:
        os.environ["BRUNOISE_TLS_CA"] = tls_ca


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
