"""`brunoise simulate`: capacity planning with the fleet simulator (``brunoise.simulate``) in virtual time."""

from __future__ import annotations

import json
import pathlib
from typing import Annotated, Any

import typer

from brunoise.cli.output import print_error

HELP = """Simulate a fleet in virtual time: the real routing keys, pick, policy rounds and simulated-engine model
on a bench workload or a trace, and print hit rate (and over the infinite-cache oracle), TTFT p50/p99, load
max/mean (requests and time-averaged in-flight), pods per session, moves and churn per round, per phase.

Traffic: --workload NAME replays a seeded bench workload (chat_tenant, chat, agentic, docs; needs the
repository's bench/ package, i.e. run from the checkout's root); --trace FILE replays a JSONL trace
(one request a line: {"t", "session", "tenant", "max_tokens", and "messages" | "prompt" | "block_hashes" +
"prompt_tokens"}; {"restart": POD, "t": T} lines restart a pod). --sweep pods=4,8,16 runs the same traffic on
each fleet size; with --ttft-p99-slo-ms it names the smallest fleet that meets it.
"""


def simulate(
    workload: Annotated[str, typer.Option(help="A bench workload (bench/presets.py).")] = "chat_tenant",
    trace: Annotated[str | None, typer.Option(help="A JSONL trace instead of a bench workload.")] = None,
    quick: Annotated[bool, typer.Option(help="The bench workload's short --quick phases.")] = False,
    pods: Annotated[int, typer.Option(help="Pods in the fleet.")] = 4,
    capacity: Annotated[str, typer.Option(help="Relative pod capacities, cycled over the pods (e.g. 1,1,2).")] = "1",
    kv_blocks: Annotated[
        int | None, typer.Option(help="KV blocks (16 tokens) per pod (default: the workload's).")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Pods' max_model_len (default: the workload's).")] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="step (the sim engine's scheduler, exact), fluid (request-level, fast) or auto (step up to 64 pods)."
        ),
    ] = "auto",
    routers: Annotated[int, typer.Option(help="Router replicas, each with its own polled views.")] = 1,
    round_interval: Annotated[float, typer.Option(help="Assigner round interval, seconds (bench: 0.5).")] = 0.5,
    assignment_lag: Annotated[float, typer.Option(help="Seconds until routers see a new assignment.")] = 0.1,
    concurrency: Annotated[
        int, typer.Option(help="Most requests the client keeps in flight (bench: 32; 0: no limit).")
    ] = 32,
    key_layout: Annotated[str | None, typer.Option(help="Router key layout: grouped or flat (the old one).")] = None,
    router_knob: Annotated[list[str] | None, typer.Option(help="KEY=VALUE router knob (repeatable).")] = None,
    target_config: Annotated[list[str] | None, typer.Option(help="KEY=VALUE TargetConfig field (repeatable).")] = None,
    death: Annotated[list[str] | None, typer.Option(help="TIME:POD pod death (repeatable).")] = None,
    restarts: Annotated[
        bool, typer.Option(help="The workload's rolling restart (every pod, in the restart phase).")
    ] = True,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            help="A restart waits at most this long for the pod to hold no slice, then to run nothing "
            "(default 20, as the bench)."
        ),
    ] = None,
    restart_down: Annotated[
        float | None,
        typer.Option(help="Seconds a restarted pod is down (default 0.7, the bench's pods; a real vLLM: minutes)."),
    ] = None,
    kv_transfer_gb_per_s: Annotated[
        float | None,
        typer.Option(
            "--kv-transfer-gb-per-s",
            help="The pods' KV connector bandwidth (default 10, as the bench's pods): warm-ups read the KV a donor "
            "holds instead of prefilling it (step engine); 0: no connector.",
        ),
    ] = None,
    sessions: Annotated[
        int | None, typer.Option(help="Rescale the bench workload to about this many sessions.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Rescale the bench workload's phases to this many seconds.")
    ] = None,
    tenants: Annotated[int | None, typer.Option(help="Tenants of the bench workload.")] = None,
    hot_factor: Annotated[
        float | None, typer.Option(help="Arrival-rate factor of the hot tenant in its phase.")
    ] = None,
    registration: Annotated[
        str,
        typer.Option(
            help="Pods join one by one before traffic (staggered, as the bench), all at once (even), or auto "
            "(staggered up to 64 pods)."
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the workload and the simulation.")] = 0,
    sweep: Annotated[str | None, typer.Option(help="pods=N,N,...: the same traffic on each fleet size.")] = None,
    ttft_p99_slo_ms: Annotated[float | None, typer.Option(help="With --sweep: the p99 TTFT to meet.")] = None,
    oracle: Annotated[bool, typer.Option(help="Compute the infinite-cache oracle (memory grows with traffic).")] = True,
    jobs: Annotated[int, typer.Option(help="2: generate the workload in a second process beside the fleet.")] = 1,
    progress: Annotated[bool, typer.Option(help="A line on stderr every tenth of the run.")] = False,
    request_log: Annotated[
        bool,
        typer.Option(
            help="Put a row per request in the --out JSON (request_log: the bench's columns; memory grows with it)."
        ),
    ] = False,
    out: Annotated[str | None, typer.Option(help="Write the summary (and every series) as JSON here.")] = None,
    chart: Annotated[str | None, typer.Option(help="Write a PNG of load and hit rate over time here.")] = None,
) -> None:
    from brunoise.simulate import options, report

    try:
        caps = [float(c) for c in capacity.split(",") if c.strip()]
        sizes = options.parse_sweep(sweep) if sweep else [pods]

        def one(n: int) -> dict[str, Any]:
            src = options.make_source(
                workload=workload, trace=trace, quick=quick, seed=seed, pods=n, sessions=sessions,
                duration_s=duration, tenants=tenants, hot_factor=hot_factor, jobs=jobs,
            )  # fmt: skip
            spec = options.make_spec(
                pods=n, workload=workload, trace=trace, capacities=caps, kv_blocks=kv_blocks,
                max_model_len=max_model_len, engine=engine, routers=routers, round_interval_s=round_interval,
                assignment_lag_s=assignment_lag, concurrency=concurrency, key_layout=key_layout,
                router_knobs=router_knob or [], target_config=target_config or [], deaths=death or [],
                restarts=restarts, seed=seed, oracle=oracle, registration=registration,
                drain_timeout_s=drain_timeout, restart_down_s=restart_down, request_log=request_log,
                kv_transfer_gb_per_s=kv_transfer_gb_per_s,
            )  # fmt: skip
            return options.run_one(spec, src, progress)

        rows = [one(n) for n in sizes]
    except (ValueError, OSError, ImportError) as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    if sweep:
        typer.echo(report.render_sweep(rows, ttft_p99_slo_ms))
    else:
        typer.echo(report.render(rows[0]))
    if out:
        p = pathlib.Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rows if sweep else rows[0], indent=1, default=str))
        typer.echo(f"results: {p}")
    if chart:
        report.chart(rows[-1], chart)
        typer.echo(f"chart: {chart}")


def register(app: typer.Typer) -> None:
    """Add ``brunoise simulate`` to ``app``."""
    app.command(name="simulate", help=HELP)(simulate)


__all__ = ["print_error", "register", "simulate"]
