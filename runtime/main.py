"""``brunoise-runtime``: one runtime pod (simulated or vLLM engine) serving HTTP + gRPC on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from runtime.engines.base import Engine
from runtime.http_api import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from sharder.telemetry import setup_logging, setup_tracing, shutdown_tracing

log = logging.getLogger("brunoise.runtime")


def _kv_pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise argparse.ArgumentTypeError(f"{what} must be KEY=VALUE[,KEY=VALUE...], got {part!r}")
        out[k.strip()] = v.strip()
    return out


def _labels(text: str) -> dict[str, str]:
    return _kv_pairs(text, "--labels")


def _engine_arg(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"--engine-arg must be KEY=VALUE, got {text!r}")
    return k, v


def parser() -> argparse.ArgumentParser:
    from runtime.engines import sim
    from sharder.security.client import add_client_auth_args

    p = argparse.ArgumentParser(prog="brunoise-runtime", description=__doc__)
    p.add_argument("--engine", choices=("sim", "vllm"), default="sim", help="inference engine (default: sim)")
    p.add_argument(
        "--engine-arg", action="append", type=_engine_arg, default=[], metavar="KEY=VALUE",
        help="vLLM adapter option (repeatable), see runtime.engines.vllm.config_from_args, e.g. base_url=URL",
    )  # fmt: skip
    p.add_argument("--pod-id", default=None, help="pod id (default: runtime-<host>-<pid>)")
    p.add_argument("--target", default="", help="the target this pod serves")
    p.add_argument("--model", default=None, help=f"served model name (sim default: {sim.DEFAULT_MODEL})")
    p.add_argument("--labels", type=_labels, default={}, help="pod labels k=v,... (model is added if absent)")
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--grpc-host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--assigner", action="append", default=[], metavar="HOST:PORT", help="assigner address (repeatable)")
    add_client_auth_args(p)  # the pod token and CA the slicelet presents to the assigners
    p.add_argument("--report-interval", type=float, default=1.0, help="slicelet load-report interval, seconds")
    p.add_argument("--lease-ttl", type=float, default=5.0, help="slicelet lease TTL, seconds")
    p.add_argument(
        "--warm-timeout-s", type=float, default=5.0,
        help="a slice this pod gains is warmed (a donor's hottest prompts prefilled) for at most this long",
    )  # fmt: skip
    p.add_argument(
        "--peer-credentials", default=None, metavar="FILE",
        help="the credentials file (as the assigner's): only pod tokens may then read prompts over HotPrompts",
    )  # fmt: skip
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="HTTP request body limit")
    p.add_argument(
        "--header-timeout-s", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
        help="a request's headers must arrive within this (slowloris: 408 and the connection is closed)",
    )  # fmt: skip
    p.add_argument(
        "--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
        help="a request's body must arrive within this of its headers (408)",
    )  # fmt: skip
    p.add_argument("--ready-file", default=None, help="write bound addresses (JSON) here once serving")
    p.add_argument(
        "--advertise-host", default=None,
        help="host named in reports and the ready file (default: the bind host when concrete, else the primary address)",
    )  # fmt: skip
    p.add_argument(
        "--drain-timeout-s", type=float, default=30.0,
        help="on SIGTERM: readiness fails, the assigner drains the pod, requests in flight get this long; exit 0",
    )  # fmt: skip
    p.add_argument("--log-level", default=None, help="log level (default: $BRUNOISE_LOG_LEVEL, else INFO)")
    g = p.add_argument_group("simulated engine")
    d = sim.SimConfig()
    g.add_argument("--time-scale", type=float, default=d.time_scale, help="simulated time runs this many times faster")
    g.add_argument("--kv-blocks", type=int, default=d.kv_blocks, help="KV blocks of 16 tokens")
    g.add_argument("--max-model-len", type=int, default=d.max_model_len)
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    g.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    g.add_argument("--step-fixed-s", type=float, default=d.step_fixed_s)
    g.add_argument("--per-prefill-token-s", type=float, default=d.per_prefill_token_s)
    g.add_argument("--per-decode-seq-s", type=float, default=d.per_decode_seq_s)
    g.add_argument("--per-context-token-s", type=float, default=d.per_context_token_s)
    g.add_argument("--eos-probability", type=float, default=d.eos_probability)
    g.add_argument("--capacity", type=float, default=d.capacity, help="relative capacity reported in the load")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--startup-s", type=float, default=d.startup_s, help="simulated start-up time before ready")
    g.add_argument("--kv-events-endpoint", default=None, help="ZMQ endpoint for KV events (vLLM wire format)")
    g.add_argument("--fault-marker", default=None, help="TEST HOOK: a prompt containing this text crashes or hangs "
                   "the engine (--fault-mode); off unless given")  # fmt: skip
    g.add_argument("--fault-mode", choices=("crash", "hang", "error"), default="crash",
                   help="what --fault-marker does: exit the process, hang the step loop, or fail that request (500)")
    return p


def build_engine(args: argparse.Namespace) -> Engine:
    """The engine the arguments name; the vLLM adapter is imported only when asked for."""
    if args.engine == "vllm":
        from runtime.engines import vllm as vllm_engine  # lazy: only this engine needs the vLLM environment

        engine: Engine = vllm_engine.from_cli(args.model, dict(args.engine_arg))
        return engine
    from runtime.engines.sim import DEFAULT_MODEL, SimConfig, SimEngine

    if args.engine_arg:
        raise SystemExit("--engine-arg is for --engine vllm; the simulated engine takes its own flags (see --help)")
    cfg = SimConfig(
        model=args.model or DEFAULT_MODEL,
        max_model_len=args.max_model_len,
        kv_blocks=args.kv_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        step_fixed_s=args.step_fixed_s,
        per_prefill_token_s=args.per_prefill_token_s,
        per_decode_seq_s=args.per_decode_seq_s,
        per_context_token_s=args.per_context_token_s,
        time_scale=args.time_scale,
        eos_probability=args.eos_probability,
        capacity=args.capacity,
        seed=args.seed,
        startup_s=args.startup_s,
        kv_events_endpoint=args.kv_events_endpoint,
        fault_marker=args.fault_marker,
        fault_mode=args.fault_mode,
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise SystemExit(f"brunoise-runtime: {e}") from None
    return SimEngine(cfg)


async def serve(args: argparse.Namespace) -> int:
    from runtime.pod import RuntimePod
    from sharder.security.client import ClientAuth

    try:
        auth = ClientAuth.from_args(args)
    except OSError as e:
        raise SystemExit(f"brunoise-runtime: cannot read the assigner credentials: {e}") from None
    peers = None
    if args.peer_credentials:
        from sharder.security.tokens import Credentials

        try:
            peers = Credentials.load(args.peer_credentials)
        except (OSError, ValueError) as e:
            raise SystemExit(f"brunoise-runtime: cannot read --peer-credentials: {e}") from None
    engine = build_engine(args)
    pod = RuntimePod(
        engine,
        pod_id=args.pod_id or f"runtime-{socket.gethostname()}-{os.getpid()}",
        target=args.target,
        labels=args.labels,
        http_host=args.http_host,
        http_port=args.http_port,
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        assigners=args.assigner,
        report_interval_s=args.report_interval,
        lease_ttl_s=args.lease_ttl,
        max_body_bytes=args.max_body_bytes,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        ready_file=args.ready_file,
        auth=auth,
        advertise=args.advertise_host,
        warm_timeout_s=args.warm_timeout_s,
        peer_credentials=peers,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(pod.start())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            try:
                starting.result()
            except Exception as e:
                log.exception("the runtime failed to start")
                print(f"brunoise-runtime: failed to start: {e}", file=sys.stderr)
                return 1
            log.info("ready: %s", pod.addresses)
            await stopped
            log.info("draining (at most %.1fs)", args.drain_timeout_s)
            await pod.drain(args.drain_timeout_s)
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        log.info("shutting down")
    finally:
        await pod.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.assigner and not args.target:
        p.error("--assigner needs --target (the target this pod registers for)")
    if args.header_timeout_s <= 0 or args.body_timeout_s <= 0:
        p.error("--header-timeout-s and --body-timeout-s must be > 0")
    setup_logging(args.log_level)
    setup_tracing("brunoise-runtime", only_when_exporting=True)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130
    finally:
        shutdown_tracing()  # export what is still batched


if __name__ == "__main__":
    sys.exit(main())
