"""Router overhead: the same small requests direct to one sim runtime and through one router; added p50/p99 and req/s.

    .venv/bin/python bench/router_overhead.py [--requests 2000] [--concurrency 16] [--max-tokens 2] [--passthrough]
    .venv/bin/python bench/router_overhead.py --table [--levels 1,16,64] [--workers 1,2] [--peers round_robin,...]

Starts an embedded assigner, one sim runtime (time-scale 1000: engine time is negligible, so the difference is
the router's) and one router, all on 127.0.0.1, and stops them by PID at the end. With ``--passthrough`` the pod is
a runtime ``--engine vllm`` attached to a sim runtime standing in for vLLM (it speaks vLLM's HTTP API), so the routed
path has the pod's raw-bytes proxy hop too; ``passthrough_added_*`` is that hop alone (the pod vs its "vLLM").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sharder.launch import ManagedProcess, ProcessGroup, python_module

MODEL = "sim-bench"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))]


async def run_seq(
    direct: str, routed: str, n: int, body: bytes, headers: dict[str, str]
) -> tuple[list[float], list[float]]:
    """One request at a time, direct and routed interleaved, so both see the same machine noise."""
    d: list[float] = []
    r_: list[float] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(50):  # warm-up: connections, caches
            for url in (direct, routed):
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
        for _ in range(n):
            for url, out in ((direct, d), (routed, r_)):
                t = time.perf_counter()
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                out.append(time.perf_counter() - t)
    return d, r_


async def run_conc(url: str, n: int, conc: int, body: bytes, headers: dict[str, str]) -> tuple[float, list[float]]:
    """``n`` requests from ``conc`` concurrent clients (after a warm-up): requests/s and each one's latency."""
    left = n
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:

        async def worker(count: int) -> None:
            nonlocal left
            while left > 0 if count < 0 else count > 0:
                if count < 0:
                    left -= 1
                else:
                    count -= 1
                t = time.perf_counter()
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                if count < 0:
                    lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker(max(2, 50 // conc)) for _ in range(conc)))  # warm-up: connections, caches
        t = time.perf_counter()
        await asyncio.gather(*(worker(-1) for _ in range(conc)))
        return n / (time.perf_counter() - t), lat


def start_router(g: ProcessGroup, name: str, assigner: str, workers: int, logs: pathlib.Path) -> ManagedProcess:
    # one pod takes every request: admission must not shed at 64 in flight (the peers have no such limit)
    argv = python_module("axon_router.main", "--assigner", assigner, "--http-port", "0", "--grpc-port", "0",
                         "--log-level", "warning", "--workers", str(workers), "--admit-max-outstanding", "4096")  # fmt: skip
    return g.add(ManagedProcess(name, argv, log_dir=logs).start())


def wait_models(base: str, timeout_s: float = 60.0) -> None:
    """Until ``base``/v1/models lists the model (the router knows the target)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                if MODEL in r.read().decode():
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{base} never saw the target")
        time.sleep(0.1)


def table(args: argparse.Namespace, logs: pathlib.Path) -> None:
    """Every router (brunoise with each --workers count, the peers) in front of the same sim runtime, at each
    concurrency: added p50/p99 over the direct path at that concurrency, and requests/s."""
    from bench.peers import PEERS, peers_available, start_peer

    levels = [int(x) for x in args.levels.split(",")]
    with ProcessGroup() as g:
        a = g.add(ManagedProcess("assigner", python_module("sharder.assigner.main", "--store", "embedded", "--port", "0",
                  "--round-interval", "0.5", "--target", f"bench={MODEL}"), log_dir=logs).start())  # fmt: skip
        a.wait_ready(60)
        rt = g.add(ManagedProcess("runtime", python_module("runtime.main", "--engine", "sim", "--pod-id", "bench0",
                   "--target", "bench", "--model", MODEL, "--assigner", a.addresses["grpc"], "--log-level", "WARNING",
                   "--time-scale", "1000"), log_dir=logs).start())  # fmt: skip
        rt.wait_ready(60)
        routers: list[tuple[str, str]] = [("direct", rt.addresses["http"])]
        for w in (int(x) for x in args.workers.split(",")):
            r = start_router(g, f"router-w{w}", a.addresses["grpc"], w, logs)
            r.wait_ready(120)
            wait_models(r.addresses["http"])
            routers.append((f"brunoise x{w}" if w > 1 else "brunoise", r.addresses["http"]))
        missing = peers_available()
        for name in [x for x in args.peers.split(",") if x]:
            spec = PEERS[name]
            if spec.program in missing:
                print(f"(skipping {name}: {missing[spec.program]})", file=sys.stderr)
                continue
            proc, base = start_peer(spec, [rt.addresses["http"]], log_dir=logs)
            g.add(proc)
            routers.append((name, base))
        body = json.dumps({"model": MODEL, "prompt": "The quick brown fox jumps over the lazy dog. " * 4,
                           "max_tokens": args.max_tokens}).encode()  # fmt: skip
        print(f"{args.requests} requests per cell, max_tokens={args.max_tokens}, one sim runtime (time-scale 1000)")
        print(f"{'router':<22} {'conc':>4} | {'p50 ms':>7} {'p99 ms':>7} | {'added p50':>9} {'added p99':>9} | {'req/s':>7}")
        for c in levels:
            base_p50 = base_p99 = 0.0
            for name, url in routers:
                headers = {"content-type": "application/json", "x-session-id": f"bench-{c}"}
                rps, lat = asyncio.run(run_conc(url + "/v1/completions", args.requests, c, body, headers))
                p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
                if name == "direct":
                    base_p50, base_p99 = p50, p99
                print(f"{name:<22} {c:>4} | {p50:>7.2f} {p99:>7.2f} | {p50 - base_p50:>9.2f} {p99 - base_p99:>9.2f} | {rps:>7.0f}",
                      flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--passthrough", action="store_true", help="the pod proxies to a stand-in vLLM (a sim runtime)")
    ap.add_argument("--table", action="store_true",
                    help="instead: brunoise (each --workers count) beside the peer routers at each of --levels")  # fmt: skip
    ap.add_argument("--levels", default="1,16,64", help="--table: client concurrencies")
    ap.add_argument("--workers", default="1,2", help="--table: brunoise router worker counts")
    ap.add_argument("--peers", default="round_robin,sglang_cache_aware", help="--table: peer routers (bench/peers.py)")
    ns = ap.parse_args()
    logs = pathlib.Path(tempfile.mkdtemp(prefix="router-bench-"))
    if ns.table:
        table(ns, logs)
        return
    with ProcessGroup() as g:
        a = g.add(
            ManagedProcess(
                "assigner",
                python_module("sharder.assigner.main", "--store", "embedded", "--port", "0", "--round-interval", "0.5",
                              "--target", f"bench={MODEL}"),
                log_dir=logs,
            ).start()
        )
        a.wait_ready(60)
        pod_args = ("--pod-id", "bench0", "--target", "bench", "--model", MODEL, "--assigner", a.addresses["grpc"],
                    "--log-level", "WARNING")  # fmt: skip
        standin: ManagedProcess | None = None
        if ns.passthrough:
            standin = g.add(ManagedProcess("vllm-standin", python_module("runtime.main", "--engine", "sim", "--model", MODEL,
                                                                         "--time-scale", "1000", "--log-level", "WARNING"), log_dir=logs).start())  # fmt: skip
            standin.wait_ready(60)
            rt = g.add(ManagedProcess("runtime", python_module("runtime.main", "--engine", "vllm", *pod_args, "--engine-arg",
                                                                 f"base_url={standin.addresses['http']}"), log_dir=logs).start())  # fmt: skip
        else:
            rt = g.add(ManagedProcess("runtime", python_module("runtime.main", "--engine", "sim", *pod_args, "--time-scale", "1000"),
                                      log_dir=logs).start())  # fmt: skip
        ro = g.add(
            ManagedProcess(
                "router",
                python_module(
                    "axon_router.main",
                    "--assigner",
                    a.addresses["grpc"],
                    "--http-port",
                    "0",
                    "--grpc-port",
                    "0",
                    "--log-level",
                    "warning",
                ),
                log_dir=logs,
            ).start()
        )
        rt.wait_ready(60)
        ro.wait_ready(60)
        direct = (standin or rt).addresses["http"] + "/v1/completions"
        routed = ro.addresses["http"] + "/v1/completions"
        deadline = time.monotonic() + 60
        while True:  # the router must know the target
            try:
                import urllib.request

                with urllib.request.urlopen(ro.addresses["http"] + "/v1/models", timeout=2) as r:
                    if MODEL in r.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("router never saw the target")
            time.sleep(0.1)
        body = json.dumps(
            {
                "model": MODEL,
                "prompt": "The quick brown fox jumps over the lazy dog. " * 4,
                "max_tokens": ns.max_tokens,
                "stream": ns.stream,
            }
        ).encode()
        headers = {"content-type": "application/json", "x-session-id": "bench-session"}
        d, r = asyncio.run(run_seq(direct, routed, ns.requests, body, headers))
        d_rps, _ = asyncio.run(run_conc(direct, ns.requests, ns.concurrency, body, headers))
        r_rps, _ = asyncio.run(run_conc(routed, ns.requests, ns.concurrency, body, headers))
        ms = 1000.0
        res: dict[str, object] = {
            "requests": ns.requests, "max_tokens": ns.max_tokens, "stream": ns.stream, "passthrough": ns.passthrough,
            "direct_p50_ms": round(pct(d, 50) * ms, 3), "direct_p99_ms": round(pct(d, 99) * ms, 3),
            "router_p50_ms": round(pct(r, 50) * ms, 3), "router_p99_ms": round(pct(r, 99) * ms, 3),
            "added_p50_ms": round((pct(r, 50) - pct(d, 50)) * ms, 3), "added_p99_ms": round((pct(r, 99) - pct(d, 99)) * ms, 3),
            "added_mean_ms": round((statistics.mean(r) - statistics.mean(d)) * ms, 3),
            "direct_rps": round(d_rps, 1), "router_rps": round(r_rps, 1), "concurrency": ns.concurrency,
        }  # fmt: skip
        if standin is not None:
            sd, pd = asyncio.run(run_seq(direct, rt.addresses["http"] + "/v1/completions", ns.requests, body, headers))
            res["passthrough_added_p50_ms"] = round((pct(pd, 50) - pct(sd, 50)) * ms, 3)
            res["passthrough_added_p99_ms"] = round((pct(pd, 99) - pct(sd, 99)) * ms, 3)
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
