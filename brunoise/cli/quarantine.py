"""`brunoise quarantine list/clear`: keys of death the routers reported (suspected, quarantined) and clearing them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from brunoise.cli.admin import AssignerOpt, OutputOpt, _client, cli_errors
from brunoise.cli.output import CliError, OutputFormat, console, fmt_key, fmt_time_ms, make_table, parse_key, print_json
from brunoise_api.v1 import assigner_pb2

quarantine_app = typer.Typer(
    help="Keys whose requests coincided with engine crashes/hangs (routers started with --key-quarantine).",
    no_args_is_help=True,
)


def record_dict(r: assigner_pb2.KeyFaultRecord) -> dict[str, Any]:
    return {
        "target": r.target,
        "slice_key": f"{r.slice_key:016x}",
        "state": r.state,
        "pods": list(r.pods),
        "cause": r.cause,
        "first_unix_ms": r.first_unix_ms,
        "last_unix_ms": r.last_unix_ms,
        "quarantined_until_unix_ms": r.quarantined_until_unix_ms,
    }


@quarantine_app.command("list")
@cli_errors
def list_(
    target: Annotated[str, typer.Option("--target", "-t", help="Only this target.")] = "",
    suspected: Annotated[bool, typer.Option("--suspected", help="Also keys suspected after one pod's fault.")] = False,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Quarantined keys (and with --suspected the suspected ones): pods they faulted and until when."""
    with _client(assigner) as c:
        resp = c.list_quarantines(target, suspected)
    if output == OutputFormat.json:
        print_json({"keys": [record_dict(r) for r in resp.keys]})
        return
    rows = [
        (r.target, fmt_key(r.slice_key), r.state, ",".join(r.pods), r.cause,
         fmt_time_ms(r.quarantined_until_unix_ms) if r.quarantined_until_unix_ms else "-")
        for r in resp.keys
    ]  # fmt: skip
    console().print(make_table(None, ["target", "key", "state", "pods", "cause", "until"], rows))
    if not resp.keys:
        console().print("no quarantined keys")


@quarantine_app.command("clear")
@cli_errors
def clear(
    target: Annotated[str, typer.Argument(help="Target of the key (empty with --all: every target).")] = "",
    key: Annotated[str, typer.Argument(help="SliceKey (decimal or 0x-hex, as `quarantine list` shows it).")] = "",
    all_keys: Annotated[bool, typer.Option("--all", help="Every key (of TARGET, or of every target).")] = False,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Lift a key's quarantine (or --all); routers pick it up within a second."""
    if not all_keys and not (target and key):
        raise CliError("name TARGET and KEY, or pass --all", 2)
    sk = 0 if all_keys else parse_key(key if key.startswith("0x") or not _hexish(key) else "0x" + key)
    with _client(assigner) as c:
        resp = c.clear_quarantine(target, sk, all_keys)
    if output == OutputFormat.json:
        print_json({"cleared": resp.cleared})
        return
    console().print(f"cleared {resp.cleared} key(s)")


def _hexish(text: str) -> bool:
    """A 16-digit key as `quarantine list` prints it (hex without 0x)."""
    return len(text) == 16 and all(c in "0123456789abcdefABCDEF" for c in text)
