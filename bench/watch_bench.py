"""Watch fan-out latency: leader commit -> new generation at N real gRPC Watch streams (embedded and etcd stores).

Run from the repository root::

    .venv/bin/python -m bench.watch_bench --watchers 100 --commits 40

For every (backend, watched replica, assignment size, full|diffs) case it starts real assigner processes,
opens N Watch streams, then makes ``--commits`` single-CAS commits (SetOverride / ClearOverrides in turn,
one at a time: the next only after every watcher got the previous one). The latency of one delivery is
arrival time minus the assignment's ``created_unix_ms``, which the leader stamps just before its
compare-and-swap, so it includes the store write, the fan-out, serialization and the client's parse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.clerk import CHANNEL_OPTIONS
from sharder.codec import apply_diff_message as apply_diff
from sharder.launch import ManagedProcess, python_module

ROOT = str(Path(__file__).resolve().parents[1])


def _envelope_class() -> type[Message]:
    """A WatchResponse that declares only generation and created_unix_ms of either update: parsing it skips
    the slices in C (kept as unknown bytes), so 100 watchers in this one process cost what 100 routers'
    envelopes would, not 100 full parses (each router parses its own in its own process)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_watch_envelope.proto", package="bench", syntax="proto3")
    u64, i64, msg_t = (descriptor_pb2.FieldDescriptorProto.TYPE_UINT64, descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                       descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)  # fmt: skip
    opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    full = fdp.message_type.add(name="Full")  # slicing.Assignment: generation = 2, created_unix_ms = 8
    full.field.add(name="generation", number=2, type=u64, label=opt)
    full.field.add(name="created_unix_ms", number=8, type=i64, label=opt)
    diff = fdp.message_type.add(name="Diff")  # slicing.AssignmentDiff: to_generation = 3, created_unix_ms = 10
    diff.field.add(name="to_generation", number=3, type=u64, label=opt)
    diff.field.add(name="created_unix_ms", number=10, type=i64, label=opt)
    env = fdp.message_type.add(name="Envelope")  # assigner.WatchResponse: assignment = 1, diff = 2
    env.field.add(name="assignment", number=1, type=msg_t, type_name=".bench.Full", label=opt)
    env.field.add(name="diff", number=2, type=msg_t, type_name=".bench.Diff", label=opt)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Envelope"))


Envelope = _envelope_class()


class Watcher:
    """One Watch stream; records (generation, latency_ms, bytes) for every message.

    The arrival time is taken on the raw bytes; a watcher then parses only the envelope (generation and
    timestamp). ``validate`` watchers also keep every raw message and, after the case, rebuild the full
    assignment from them as a clerk would and check it: only a few do, and only afterwards, so that one bench
    process does not pay 100 routers' worth of parsing while it measures and the figures show the
    assigner's delivery, not this process's CPU."""

    def __init__(self, addr: str, diffs: bool, validate: bool = False) -> None:
        self.addr = addr
        self.diffs = diffs
        self.validate = validate
        self.generation = 0
        self.samples: list[tuple[int, float, int]] = []
        self.raw: list[bytes] = []
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)  # as a clerk connects

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        watch = self._channel.unary_stream(
            "/brunoise.v1.Assigner/Watch",
            request_serializer=assigner_pb2.WatchRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: timestamp first, parse after
        )
        call = watch(assigner_pb2.WatchRequest(target="bench", diffs=self.diffs))
        async for raw in call:
            now_ms = time.time() * 1000
            env: Any = Envelope.FromString(raw)
            if env.HasField("diff"):
                gen, created = env.diff.to_generation, env.diff.created_unix_ms
            else:
                gen, created = env.assignment.generation, env.assignment.created_unix_ms
            if self.validate:
                self.raw.append(raw)
            self.generation = gen
            self.samples.append((gen, now_ms - created, len(raw)))
            self.changed.set()

    def rebuilt(self) -> slicing_pb2.Assignment:
        """The assignment a clerk would hold after every message this watcher got."""
        base: slicing_pb2.Assignment | None = None
        for raw in self.raw:
            msg = assigner_pb2.WatchResponse.FromString(raw)
            if msg.WhichOneof("update") == "diff":
                assert base is not None, "a diff before any full assignment"
                base = apply_diff(base, msg.diff)
            else:
                base = msg.assignment
        assert base is not None, "no message"
        return base

    async def wait_for(self, generation: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.generation < generation:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"watcher at {self.generation}, wanted {generation}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=remaining)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task
        await self._channel.close(None)


def start_assigner(name: str, store_args: Sequence[str], log_dir: Path) -> ManagedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["BRUNOISE_LOG_LEVEL"] = "WARNING"
    argv = python_module(
        "sharder.assigner.main", "--id", name, "--round-interval", "30", "--lease-ttl", "3", *store_args
    )
    p = ManagedProcess(name, argv, env=env, log_dir=log_dir / name).start()
    p.wait_ready(30)
    return p


async def run_case(
    leader_addr: str, watch_addr: str, *, watchers: int, commits: int, diffs: bool, slices: int, pods: int
) -> dict[str, float]:
    async with grpc.aio.insecure_channel(leader_addr) as ch:
        stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
        for _ in range(200):  # until a leader is elected
            try:
                await stub.ConfigureTarget(
                    assigner_pb2.ConfigureTargetRequest(
                        # no cold merging and a band wide enough: the assignment keeps all its slices
                        config=slicing_pb2.TargetConfig(
                            target="bench", initial_slices=slices, model="m", merge_threshold=0,
                            max_slices_per_pod=max(1000, slices),
                        )
                    )
                )
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        for i in range(pods):
            pod = slicing_pb2.Pod(id=f"b{i}", address=f"127.0.0.1:{7000 + i}", target="bench", labels={"model": "m"})
            await stub.Report(assigner_pb2.ReportRequest(pod=pod, lease_ttl_ms=600_000))
        ws = [Watcher(watch_addr, diffs, validate=i < 2) for i in range(watchers)]
        for w in ws:
            await w.start()
        cur = await stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target="bench"))
        await asyncio.gather(*(w.wait_for(cur.generation) for w in ws))
        for w in ws:
            w.samples.clear()
        gens: set[int] = set()
        t0 = time.monotonic()
        for i in range(commits):
            if i % 2 == 0:
                ov = slicing_pb2.Override(id="bench", move=slicing_pb2.MoveOverride(key=(i * 7919) << 40, pods=["b1", "b2"]))
                resp = await stub.SetOverride(assigner_pb2.SetOverrideRequest(target="bench", override=ov))
                gen = resp.assignment.generation
            else:
                cleared = await stub.ClearOverrides(assigner_pb2.ClearOverridesRequest(target="bench"))
                gen = cleared.assignment.generation
            gens.add(gen)
            await asyncio.gather(*(w.wait_for(gen) for w in ws))
        elapsed = time.monotonic() - t0
        final = await stub.GetAssignment(assigner_pb2.GetAssignmentRequest(target="bench"))
        for w in ws[:2]:  # the validating watchers rebuilt exactly the stored assignment
            base = w.rebuilt()
            assert base.generation == final.generation
            assert [(x.slice.lo, list(x.replicas)) for x in base.slices] == [
                (x.slice.lo, list(x.replicas)) for x in final.slices
            ], "a watcher's rebuilt assignment differs from the stored one"
        lat = sorted(ms for w in ws for g, ms, _ in w.samples if g in gens)
        first: dict[int, float] = {}  # per generation, the earliest delivery: store write + publish, no fan-out
        for w in ws:
            for g, ms, _ in w.samples:
                if g in gens:
                    first[g] = min(first.get(g, ms), ms)
        sizes = [b for w in ws for g, _, b in w.samples if g in gens]
        for w in ws:
            await w.stop()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "n": len(lat),
        "p50": statistics.median(lat),
        "first": statistics.median(first.values()),
        "p99": q[98],
        "max": lat[-1],
        "bytes": statistics.mean(sizes),
        "commits_s": commits / elapsed,
        "slices": len(final.slices),
        "stored": final.ByteSize(),
    }


async def bench(args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    rows: list[tuple[str, dict[str, float]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="brunoise-watch-bench-"))
    for backend in args.backends:
        cluster = None
        procs: list[ManagedProcess] = []
        try:
            if backend == "etcd":
                from sharder.etcd_server import EtcdCluster

                cluster = EtcdCluster(3).start()
                store_args = ["--store", "etcd", "--etcd-prefix", "/watch-bench"]
                for e in cluster.endpoints:
                    store_args += ["--etcd-endpoint", e]
            else:
                store_args = ["--store", "embedded"]
            for slices in args.slices:
                for mode in args.modes:
                    leader = start_assigner("leader", [*store_args, "--etcd-prefix", f"/wb-{slices}-{mode}"]
                                            if backend == "etcd" else store_args, tmp)
                    procs.append(leader)
                    targets = [("leader", leader.addresses["grpc"])]
                    if backend == "etcd" and args.follower:
                        follower = start_assigner("follower", [*store_args, "--etcd-prefix", f"/wb-{slices}-{mode}"], tmp)
                        procs.append(follower)
                        targets.append(("follower", follower.addresses["grpc"]))
                    for where, addr in targets:
                        stats = await run_case(
                            leader.addresses["grpc"], addr, watchers=args.watchers, commits=args.commits,
                            diffs=mode == "diffs", slices=slices, pods=args.pods,
                        )
                        rows.append((f"{backend:<8} {where:<8} {slices:>6} {mode:<5}", stats))
                        print_row(rows[-1])
                    for p in procs:
                        p.stop()
                    procs.clear()
        finally:
            for p in procs:
                p.stop()
            if cluster is not None:
                cluster.close()
    return rows


HEADER = (
    f"{'backend':<8} {'watched':<8} {'slices':>6} {'mode':<5} {'deliveries':>10} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'max ms':>8} {'first ms':>8} {'bytes/msg':>10} {'commits/s':>9} {'held':>6} {'stored B':>9}"
)


def print_row(row: tuple[str, dict[str, float]]) -> None:
    name, s = row
    print(
        f"{name} {int(s['n']):>10} {s['p50']:>8.1f} {s['p99']:>8.1f} {s['max']:>8.1f} {s['first']:>8.1f} {s['bytes']:>10.0f} "
        f"{s['commits_s']:>9.1f} {int(s['slices']):>6} {int(s['stored']):>9}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--watchers", type=int, default=100)
    p.add_argument("--commits", type=int, default=40)
    p.add_argument("--backends", type=lambda s: s.split(","), default=["embedded", "etcd"])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["full", "diffs"])
    p.add_argument("--slices", type=lambda s: [int(x) for x in s.split(",")], default=[64, 1024])
    p.add_argument("--pods", type=int, default=3, help="registered pods (each in the assignment)")
    p.add_argument("--no-follower", dest="follower", action="store_false", help="etcd: skip watchers on a follower")
    args = p.parse_args(argv)
    print(HEADER, flush=True)
    rows = asyncio.run(bench(args))
    worst = max(s["p99"] for _, s in rows)
    print(f"\nworst p99: {worst:.1f} ms (target <= 100 ms)", file=sys.stderr)


if __name__ == "__main__":
    main()
