"""``brunoise-runtime``: one runtime pod (simulated or vLLM engine) serving HTTP + gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from runtime.engines.base import Engine
from runtime.settings import RuntimeSettings, parse_runtime_settings
from sharder.telemetry import setup_logging, setup_tracing, shutdown_tracing

log = logging.getLogger("brunoise.runtime")


def parse_args(argv: Sequence[str] | None = None) -> RuntimeSettings:
    """Flags, ``BRUNOISE_RUNTIME_*`` variables and ``--config`` YAML, resolved by ``RuntimeSettings``."""
    return parse_runtime_settings(argv)


def build_engine(args: RuntimeSettings) -> Engine:
    """The engine the arguments name; the vLLM adapter is imported only when asked for."""
    if args.engine == "vllm":
        from runtime.engines import vllm as vllm_engine  # lazy: only this engine needs the vLLM environment

        engine: Engine = vllm_engine.from_cli(args.model, args.engine_options())
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
        kv_transfer_gb_per_s=args.kv_transfer_gb_per_s,
        fault_marker=args.fault_marker,
        fault_mode=args.fault_mode,
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise SystemExit(f"brunoise-runtime: {e}") from None
    return SimEngine(cfg)


async def serve(args: RuntimeSettings) -> int:
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
    args = parse_args(argv)
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
