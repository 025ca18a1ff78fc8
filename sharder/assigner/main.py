"""Entry point of the assigner process (``brunoise-assigner``): store, election, gRPC server, health, reflection."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import random
import signal
import socket
import uuid
from collections.abc import Sequence

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (grpc_health.v1.health.aio)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from brunoise_api.v1 import assigner_pb2, slicing_pb2
from sharder.advertise import advertise_host, host_port, is_loopback
from sharder.config import TargetConfig
from sharder.launch import write_ready_file
from sharder.security.interceptor import AuthInterceptor, RequestCheck
from sharder.security.tls import server_credentials
from sharder.security.tokens import ASSIGNER_RPC_ROLES, Credentials, Principal, Role
from sharder.store import open_store
from sharder.store.base import LeaderInfo, Store, StoreError
from sharder.telemetry import setup_logging, setup_tracing, shutdown_tracing

from .hub import WatchHub
from .leader import Leader, load_policy
from .metrics import AssignerMetrics, serve_metrics
from .pod_loads import PodLoadView
from .rollouts import RolloutDriver, Rollouts
from .service import MAX_REPORT_BYTES, AssignerService, add_to_server
from .settings import assigner_parser, parse_assigner_settings

log = logging.getLogger("brunoise.assigner")

SERVICE_NAME = assigner_pb2.DESCRIPTOR.services_by_name["Assigner"].full_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags, ``BRUNOISE_ASSIGNER_*`` variables and ``--config`` YAML, resolved by ``AssignerSettings``, then the
    checks that span several settings."""
    p = assigner_parser("brunoise-assigner", "The brunoise assigner (sharder) service.")
    settings = parse_assigner_settings(p, argv)
    args = argparse.Namespace(**settings.model_dump())
    if args.store == "etcd" and not args.etcd_endpoint:
        p.error("--store etcd needs at least one --etcd-endpoint")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if not is_loopback(args.host) and not args.insecure and not (args.credentials and args.tls_cert):
        p.error(
            f"refusing to serve on {args.host} without --credentials and --tls-cert/--tls-key "
            "(anyone who reaches it could register pods and receive users' prompts); pass --insecure to override"
        )
    if args.targets_from_reports and (args.credentials or not is_loopback(args.host)):
        p.error("--targets-from-reports is for an open loopback assigner (development and tests): with credentials "
                "or a non-loopback --host, targets come from --target/--targets-file or an admin's ConfigureTarget")
    try:
        args.targets = configured_targets(args.target, args.targets_file)
    except (OSError, ValueError, TypeError) as exc:
        p.error(f"targets: {exc}")
    return args




def configured_targets(flags: list[str], path: str | None) -> list[TargetConfig]:
    """Targets from ``--target NAME[=MODEL]`` flags and a ``--targets-file`` (validated, unique names)."""
    out: list[TargetConfig] = []
    for f in flags:
        name, _, model = f.partition("=")
        out.append(TargetConfig(target=name, model=model).validate())
    if path:
        doc = json.loads(pathlib.Path(path).read_text())
        if not isinstance(doc, list):
            raise ValueError(f"{path}: expected a JSON list of target configs")
        for d in doc:
            if not isinstance(d, dict):
                raise ValueError(f"{path}: each target config must be an object")
            if isinstance(d.get("eligibility"), dict):
                d = {**d, "eligibility": tuple(sorted(d["eligibility"].items()))}
            out.append(TargetConfig(**d).validate())
    names = [c.target for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a target is configured twice: {names}")
    return out


def make_store(args: argparse.Namespace) -> Store:
    if args.store == "etcd":
        tls = {k: v for k, v in (("ca_cert", args.etcd_ca), ("cert_key", args.etcd_key), ("cert_cert", args.etcd_cert)) if v}
        if args.etcd_user:
            tls["user"] = args.etcd_user
            tls["password"] = os.environ.get("BRUNOISE_ETCD_PASSWORD", "")
        return open_store("etcd", endpoints=list(args.etcd_endpoint), prefix=args.etcd_prefix, **tls)
    return open_store("embedded", snapshot_path=args.snapshot)


def check_drain(principal: Principal, request: assigner_pb2.DrainRequest) -> str | None:
    """A pod token drains (or, restarted, undrains) only its own pod id: a runtime's graceful shutdown."""
    if principal.role is Role.POD and request.pod_id != principal.pod_id:
        return f"token {principal.name!r} may drain only pod {principal.pod_id!r}, not {request.pod_id!r}"
    return None


def check_report(principal: Principal, request: assigner_pb2.ReportRequest) -> str | None:
    """A pod token reports only for its own pod id (registration and load alike)."""
    if request.pod.id != principal.pod_id:
        return f"token {principal.name!r} may report only for pod {principal.pod_id!r}, not {request.pod.id!r}"
    if request.HasField("load") and request.load.pod_id not in ("", principal.pod_id):
        return f"token {principal.name!r} may report load only for pod {principal.pod_id!r}"
    return None


async def feed_hub(store: Store, hub: WatchHub, stop: asyncio.Event) -> None:
    """Follow every stored generation into the hub (reconnecting with backoff when the store fails)."""
    delay = 0.05
    while not stop.is_set():
        try:
            async for v in store.watch(None, 0):
                hub.publish(slicing_pb2.Assignment.FromString(v.data))
                delay = 0.05
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # StoreError and transport errors alike: retry
            log.debug("store watch ended: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


async def watch_health(
    store: Store, health: health_aio.HealthServicer, stop: asyncio.Event, metrics: AssignerMetrics
) -> None:
    """NOT_SERVING once the store missed two pings in a row (one slow answer is not an outage), SERVING as
    soon as it answers again."""
    last: bool | None = None
    failures = 0
    while not stop.is_set():
        try:
            with metrics.store_op("ping"):
                answered = bool(await asyncio.wait_for(store.ping(), timeout=1.5))
        except Exception as exc:  # StoreError, TimeoutError, transport errors: all mean "did not answer"
            log.debug("store ping failed: %s", exc)
            answered = False
        failures = 0 if answered else failures + 1
        ok = answered or (failures < 2 and last is not False)
        if ok != last:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await health.set(name, status)
            log.warning("store %s: health %s", "reachable" if ok else "UNREACHABLE", "SERVING" if ok else "NOT_SERVING")
            metrics.set_store_up(ok)
            last = ok
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.25)


async def serve(args: argparse.Namespace) -> None:
    ident = args.id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    policy = load_policy(args.policy)
    credentials = Credentials.load(args.credentials) if args.credentials else None
    store = make_store(args)
    try:
        await store.start()
    except StoreError as exc:
        raise SystemExit(f"brunoise-assigner: {exc}") from exc
    interceptors = []
    if credentials is not None:
        checks: dict[str, RequestCheck] = {"Report": check_report, "Drain": check_drain}
        interceptors.append(AuthInterceptor(credentials, SERVICE_NAME, ASSIGNER_RPC_ROLES, checks))
    else:
        log.warning("no --credentials: every Assigner RPC is open to anyone who reaches %s (loopback only)", args.host)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_REPORT_BYTES + 64 * 1024),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    if args.tls_cert:
        port = server.add_secure_port(f"{args.host}:{args.port}", server_credentials(args.tls_cert, args.tls_key))
    else:
        port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise SystemExit(f"cannot bind {args.host}:{args.port}")
    address = host_port(advertise_host(args.host, args.advertise_host), port)  # what leader hints name
    hub = WatchHub()
    view = PodLoadView()
    metrics = AssignerMetrics()
    leader = Leader(
        store,
        LeaderInfo(candidate_id=ident, address=address),
        hub,
        view,
        policy=policy,
        round_interval_s=args.round_interval,
        lease_ttl_s=args.lease_ttl,
        report_interval_s=args.report_interval,
        targets=args.targets,
        targets_from_reports=args.targets_from_reports,
        metrics=metrics,
    )
    rollouts = RolloutDriver(Rollouts(store), leader, view, interval_s=args.rollout_interval)
    service = AssignerService(store, leader, hub, credentials=credentials, rollout_driver=rollouts)
    add_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME), server)
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(feed_hub(store, hub, stop), name="feed"),
        asyncio.create_task(watch_health(store, health, stop, metrics), name="health"),
    ]
    ready = {"grpc": address, "id": ident, "tls": "1" if args.tls_cert else ""}
    metrics_runner = None
    if args.metrics_port is not None:
        metrics_runner, mport = await serve_metrics(metrics, leader.led, hub, args.host, args.metrics_port)
        ready["metrics"] = f"http://{args.host}:{mport}/metrics"
    leader.start()
    rollouts.start()
    log.warning("assigner %s serving on %s (store %s)", ident, address, args.store)
    if args.ready_file:
        write_ready_file(args.ready_file, ready)
    await stop.wait()

    log.warning("assigner %s stopping", ident)
    await health.enter_graceful_shutdown()
    hub.close()
    await rollouts.stop()
    await leader.stop()
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    await server.stop(grace=0.5)
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(store.close(), timeout=2.0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    setup_tracing("brunoise-assigner")
    try:
        asyncio.run(serve(args))
    finally:
        shutdown_tracing()  # export what is still batched


if __name__ == "__main__":
    main()
