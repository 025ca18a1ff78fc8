"""`brunoise quota set/get/list`: tenant limits (requests/s, tokens/min, concurrent) and their ledgers in the store."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from brunoise.cli.admin import AssignerOpt, OutputOpt, _client, _require, cli_errors
from brunoise.cli.output import OutputFormat, console, fmt_float, make_table, print_json
from brunoise_api.v1 import assigner_pb2

quota_app = typer.Typer(help="Tenant quotas: limits live in the store; routers started with --quotas enforce them.",
                        no_args_is_help=True)  # fmt: skip

TenantArg = Annotated[str, typer.Argument(help="Tenant (x-tenant-id, the gRPC tenant field, or an API key's tenant).")]


def quota_dict(q: assigner_pb2.QuotaStatus) -> dict[str, Any]:
    lim = q.limits
    return {
        "tenant": lim.tenant,
        "requests_per_s": lim.requests_per_s,
        "tokens_per_min": lim.tokens_per_min,
        "concurrent": lim.concurrent,
        "allotment_s": lim.allotment_s,
        "lease_ms": lim.lease_ms,
        "requests_available": q.requests_available,
        "tokens_available": q.tokens_available,
        "concurrent_held": q.concurrent_held,
        "allotments": [
            {
                "id": a.id,
                "holder": a.holder,
                "requests": a.requests,
                "tokens": a.tokens,
                "concurrent": a.concurrent,
                "expires_unix_ms": a.expires_unix_ms,
            }
            for a in q.allotments
        ],
    }


def _limit(x: float) -> str:
    return fmt_float(x) if x > 0 else "-"


def _print(quotas: list[assigner_pb2.QuotaStatus], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        print_json({"quotas": [quota_dict(q) for q in quotas]})
        return
    rows = [
        (q.limits.tenant, _limit(q.limits.requests_per_s), _limit(q.limits.tokens_per_min),
         q.limits.concurrent or "-", fmt_float(q.requests_available), fmt_float(q.tokens_available),
         q.concurrent_held, len(q.allotments))
        for q in quotas
    ]  # fmt: skip
    cols = ["tenant", "req/s", "tokens/min", "concurrent", "req avail", "tokens avail", "slots held", "allotments"]
    console().print(make_table(None, cols, rows, right=cols[1:]))
    if not quotas:
        console().print("no quotas: every tenant is unlimited")


@quota_app.command("set")
@cli_errors
def set_(
    tenant: TenantArg,
    rps: Annotated[float, typer.Option("--rps", help="Requests per second (0: unlimited).")] = 0.0,
    tpm: Annotated[float, typer.Option("--tpm", help="Tokens per minute, prompt + max_tokens (0: unlimited).")] = 0.0,
    concurrent: Annotated[int, typer.Option("--concurrent", help="Requests in flight (0: unlimited).")] = 0,
    allotment_s: Annotated[
        float, typer.Option("--allotment-s", help="Seconds of rate per allotment (the burst).")
    ] = 1.0,
    lease_ms: Annotated[int, typer.Option("--lease-ms", help="An allotment's lease.")] = 10_000,
    remove: Annotated[bool, typer.Option("--remove", help="Drop the tenant's quota (unlimited again).")] = False,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Set (or --remove) a tenant's limits."""
    lim = assigner_pb2.QuotaLimits(tenant=_require(tenant, "TENANT"), requests_per_s=rps, tokens_per_min=tpm,
                                   concurrent=concurrent, allotment_s=allotment_s, lease_ms=lease_ms)  # fmt: skip
    with _client(assigner) as c:
        q = c.set_quota(lim, remove=remove)
    if remove and output != OutputFormat.json:
        console().print(f"tenant {tenant} has no quota now (unlimited)")
        return
    _print([q], output)


@quota_app.command("get")
@cli_errors
def get(tenant: TenantArg, assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """A tenant's limits, what its buckets hold now and the allotments routers hold."""
    with _client(assigner) as c:
        q = c.get_quota(_require(tenant, "TENANT"))
    _print([q], output)
    if output != OutputFormat.json:
        for a in q.allotments:
            console().print(f"  allotment {a.id} held by {a.holder}: {a.requests} req, {a.tokens} tokens, "
                            f"{a.concurrent} slots")  # fmt: skip


@quota_app.command("list")
@cli_errors
def list_(assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """Every tenant with a quota."""
    with _client(assigner) as c:
        resp = c.list_quotas()
    _print(list(resp.quotas), output)
