"""`brunoise tenant set-region/clear-region/list`: tenants' home regions and residency pins (store records)."""

from __future__ import annotations

from typing import Annotated

import typer

from brunoise.cli.admin import AssignerOpt, OutputOpt, _client, _require, cli_errors
from brunoise.cli.output import OutputFormat, console, make_table, print_json
from brunoise_api.v1 import assigner_pb2

tenant_app = typer.Typer(
    help="Tenant placement: a home region (routers send the tenant's traffic to that region's targets first) and "
    "an optional residency pin (its requests never leave the region; 503 residency_unavailable when it is down).",
    no_args_is_help=True,
)

TenantArg = Annotated[str, typer.Argument(help="Tenant (x-tenant-id, the gRPC tenant field, or an API key's tenant).")]


def _print(placements: list[assigner_pb2.TenantPlacement], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        print_json(
            {"placements": [{"tenant": p.tenant, "home_region": p.home_region, "pinned": p.pinned} for p in placements]}
        )
        return
    rows = [(p.tenant, p.home_region, "pinned (residency)" if p.pinned else "fails over") for p in placements]
    console().print(make_table(None, ["tenant", "home region", "when the region is down"], rows))
    if not placements:
        console().print("no placements: every tenant goes to its router's own region first")


@tenant_app.command("set-region")
@cli_errors
def set_region(
    tenant: TenantArg,
    region: Annotated[str, typer.Argument(help="The home region (the region label of its pods and targets).")],
    pinned: Annotated[
        bool, typer.Option("--pinned", help="Residency: never serve the tenant outside this region (fail closed).")
    ] = False,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Set a tenant's home region (and with --pinned, its residency)."""
    want = assigner_pb2.TenantPlacement(tenant=_require(tenant, "TENANT"), home_region=_require(region, "REGION"),
                                        pinned=pinned)  # fmt: skip
    with _client(assigner) as c:
        got = c.set_placement(want)
    _print([got], output)


@tenant_app.command("clear-region")
@cli_errors
def clear_region(tenant: TenantArg, assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """Drop a tenant's placement (it follows its router's own region again, with no residency)."""
    with _client(assigner) as c:
        c.set_placement(assigner_pb2.TenantPlacement(tenant=_require(tenant, "TENANT")), remove=True)
    if output == OutputFormat.json:
        print_json({"tenant": tenant, "removed": True})
    else:
        console().print(f"tenant {tenant} has no home region now")


@tenant_app.command("list")
@cli_errors
def list_(assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """Every tenant with a placement."""
    with _client(assigner) as c:
        resp = c.list_placements()
    _print(list(resp.placements), output)
