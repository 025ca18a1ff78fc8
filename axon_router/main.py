"""``brunoise-router``: one router process serving gRPC and OpenAI-compatible HTTP over the clerk's assignment."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from axon_router.assigner_client import AssignerCalls
from axon_router.auth import ApiKeys
from axon_router.frontends.grpc import SERVICE_NAME as GRPC_SERVICE
from axon_router.frontends.grpc import build_server
from axon_router.frontends.openai_http import OpenAIFrontend
from axon_router.frontends.readiness import Readiness
from axon_router.metrics import RouterMetrics
from axon_router.quarantine import KeyGuard
from axon_router.quota import QuotaGate
from axon_router.regions import RegionRouter
from axon_router.rollout import RolloutView
from axon_router.router import Router
from axon_router.settings import RouterServerSettings, knobs_of, parse_router_settings
from axon_router.tracing import setup_tracing
from sharder.advertise import advertise_host, host_port, is_loopback
from sharder.launch import write_ready_file
from sharder.quarantine import QuarantinePolicy
from sharder.security.client import ClientAuth
from sharder.telemetry import setup_logging, shutdown_tracing

log = logging.getLogger("axon_router")


def parse_args(argv: Sequence[str] | None = None) -> RouterServerSettings:
    """Flags, ``BRUNOISE_ROUTER_*`` variables and ``--config`` YAML, resolved by ``RouterSettings``."""
    settings, _ = parse_router_settings(argv)
    return settings


def load_api_keys(ns: RouterServerSettings) -> ApiKeys | None:
    """The API keys to require (None: open); exits when a non-loopback router would serve without keys."""
    keys = None
    if ns.api_keys_file:
        try:
            keys = ApiKeys.load(ns.api_keys_file)
        except (OSError, ValueError) as e:
            raise SystemExit(f"brunoise-router: cannot use --api-keys-file: {e}") from None
    if keys is None and not is_loopback(ns.host) and not ns.insecure:
        raise SystemExit(
            f"brunoise-router: refusing to serve {ns.host} without API keys; pass --api-keys-file "
            "(or --insecure to serve it open anyway)"
        )
    return keys


async def serve(ns: RouterServerSettings) -> None:
    from sharder.clerk import Clerk  # the clerk is the router's only view of the assignment

    knobs = knobs_of(ns)
    api_keys = load_api_keys(ns)  # before anything binds
    try:
        auth = ClientAuth.from_args(ns)  # the reader token and CA the clerk presents to the assigners
    except OSError as e:
        raise SystemExit(f"brunoise-router: cannot read the assigner credentials: {e}") from None
    metrics = RouterMetrics(knobs)
    clerk = Clerk(ns.assigner, auth=auth)
    await clerk.start()
    if ns.wait_ready_s > 0:
        with contextlib.suppress(Exception):
            await clerk.wait_ready(ns.wait_ready_s)
    calls = AssignerCalls(ns.assigner, auth)  # the router's own credentials, as the clerk's
    calls.start()
    quota = QuotaGate(calls, f"{socket.gethostname()}:{os.getpid()}") if ns.quotas else None
    guard = None
    if ns.key_quarantine:
        policy = QuarantinePolicy(
            ns.quarantine_pods, int(ns.quarantine_window_s * 1000), int(ns.quarantine_cooldown_s * 1000)
        )
        try:
            policy.validate()
        except ValueError as e:
            raise SystemExit(f"brunoise-router: {e}") from None
        guard = KeyGuard(calls, metrics, policy)
        with contextlib.suppress(Exception):
            await guard.refresh()  # a restarted router knows the quarantines before it serves
        await guard.start()
    regions = RegionRouter(ns.region, metrics, calls, refresh_s=ns.placement_refresh_s, retry_after_s=knobs.retry_after_s)
    await regions.start()
    rollout_calls = AssignerCalls(ns.assigner, auth=auth)
    rollout_calls.start()
    rollouts = RolloutView(rollout_calls, metrics.registry)
    await rollouts.start()  # a (re)started router knows the model-version rollouts before it serves
    router = Router(clerk, knobs, metrics, quota=quota, guard=guard, rollouts=rollouts, regions=regions)
    await router.start()
    readiness = Readiness(router)
    http = OpenAIFrontend(router, api_keys, readiness)
    runner = http.runner(shutdown_timeout=ns.drain_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, ns.host, ns.http_port, backlog=1024, reuse_port=ns.reuse_port or None)
    await site.start()
    http_port = runner.addresses[0][1]
    gserver, gport, hs = build_server(router, ns.host, ns.grpc_port, api_keys, reuse_port=ns.reuse_port)
    await gserver.start()
    readiness.start_health_sync(hs, (GRPC_SERVICE,))
    adv = advertise_host(ns.host, ns.advertise_host)
    addresses = {"http": f"http://{host_port(adv, http_port)}", "grpc": host_port(adv, gport)}
    # long-lived start-up objects leave the collector's view; fewer, cheaper collections on the hot path
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    if ns.ready_file:
        write_ready_file(ns.ready_file, addresses)
    log.info(
        "router serving",
        extra={
            "addresses": addresses,
            "assigners": ns.assigner,
            "api_keys": len(api_keys) if api_keys is not None else 0,
            "knobs": knobs.as_dict(),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    t = time.monotonic()
    # readiness fails first; then the listeners close and open requests / streams get --drain-timeout-s
    await readiness.stop()
    readiness.drain(hs, (GRPC_SERVICE,))
    await asyncio.gather(gserver.stop(grace=ns.drain_timeout_s), runner.cleanup())
    await router.stop()
    if quota is not None:
        await quota.stop()
    if guard is not None:
        await guard.stop()
    await rollouts.stop()
    await rollout_calls.close()
    await regions.stop()
    await calls.close()
    await clerk.stop()
    log.info("router stopped", extra={"stop_s": round(time.monotonic() - t, 3)})


def main(argv: Sequence[str] | None = None) -> None:
    ns = parse_args(argv)
    if ns.workers < 1:
        raise SystemExit("brunoise-router: --workers must be at least 1")
    if ns.workers > 1:
        from axon_router.workers import supervise

        load_api_keys(ns)  # refuse an open non-loopback router before anything starts
        args = list(sys.argv[1:] if argv is None else argv)
        raise SystemExit(supervise(args, ns.workers, ns.host, ns.http_port, ns.grpc_port, ns.ready_file))
    setup_logging(ns.log_level)
    setup_tracing(console=ns.otel_console, sample_ratio=knobs_of(ns).trace_sample_ratio)
    try:  # optional: a faster event loop when installed
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        asyncio.run(serve(ns))
    else:
        uvloop.run(serve(ns))
    shutdown_tracing()  # export what is still batched


if __name__ == "__main__":
    main()
