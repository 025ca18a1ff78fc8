"""``brunoise-router``: one router process serving gRPC and OpenAI-compatible HTTP over the clerk's assignment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import ipaddress
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from axon_router.auth import ApiKeys
from axon_router.frontends.grpc import build_server
from axon_router.frontends.openai_http import OpenAIFrontend
from axon_router.knobs import add_knob_args, knobs_from_args
from axon_router.metrics import RouterMetrics
from axon_router.router import Router
from axon_router.tracing import setup_tracing
from brunoise.launch import write_ready_file

log = logging.getLogger("axon_router")

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="brunoise-router", description=__doc__)
    p.add_argument("--assigner", action="append", default=[], required=True, help="assigner gRPC address (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=50061)
    p.add_argument("--ready-file", default=None, help='write {"http": URL, "grpc": ADDR} here once serving')
    p.add_argument(
        "--wait-ready-s", type=float, default=0.0, help="wait up to this long for the first assignment before serving"
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--otel-console", action="store_true", help="export spans to stdout")
    p.add_argument(
        "--api-keys-file",
        default=None,
        help="JSON/YAML mapping sha256 hex of each API key -> {name, tenant}; clients then send "
        "'Authorization: Bearer KEY' (gRPC: authorization metadata); a key's tenant is its requests' routing group",
    )
    p.add_argument(
        "--insecure", action="store_true", help="serve a non-loopback --host without API keys (refused otherwise)"
    )
    add_knob_args(p)
    return p.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_api_keys(ns: argparse.Namespace) -> ApiKeys | None:
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


async def serve(ns: argparse.Namespace) -> None:
    from sharder.clerk import Clerk  # the clerk is the router's only view of the assignment

    knobs = knobs_from_args(ns)
    api_keys = load_api_keys(ns)  # before anything binds
    metrics = RouterMetrics(knobs)
    clerk = Clerk(ns.assigner)
    await clerk.start()
    if ns.wait_ready_s > 0:
        with contextlib.suppress(Exception):
            await clerk.wait_ready(ns.wait_ready_s)
    router = Router(clerk, knobs, metrics)
    await router.start()
    http = OpenAIFrontend(router, api_keys)
    runner = http.runner()
    await runner.setup()
    site = web.TCPSite(runner, ns.host, ns.http_port, backlog=1024)
    await site.start()
    http_port = runner.addresses[0][1]
    gserver, gport, _ = build_server(router, ns.host, ns.grpc_port, api_keys)
    await gserver.start()
    addresses = {"http": f"http://{ns.host}:{http_port}", "grpc": f"{ns.host}:{gport}"}
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
    await gserver.stop(grace=1.0)
    await runner.cleanup()
    await router.stop()
    await clerk.stop()
    log.info("router stopped", extra={"stop_s": round(time.monotonic() - t, 3)})


def main(argv: Sequence[str] | None = None) -> None:
    ns = parse_args(argv)
    setup_logging(ns.log_level)
    setup_tracing(console=ns.otel_console, sample_ratio=ns.knob_trace_sample_ratio)
    try:  # optional: a faster event loop when installed
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        asyncio.run(serve(ns))
    else:
        uvloop.run(serve(ns))


if __name__ == "__main__":
    main()
