"""One runtime pod wired together: engine, HTTP and gRPC surfaces, health, the optional slicelet, the ready file,
and the graceful shutdown (readiness fails, the assigner drains the pod, requests in flight finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web

from runtime.engines.base import Engine, EngineChunk
from runtime.grpc_service import GrpcServer, RuntimeService
from runtime.http_api import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, HttpApi
from runtime.outcomes import CountedEngine
from runtime.tracing import TracedEngine
from runtime.warm import PromptLog, RecordingEngine, Warmer, WarmMetrics, warm_priority
from sharder.advertise import advertise_host, host_port
from sharder.headers import LEADER_METADATA_KEY
from sharder.keyspace import Slice
from sharder.kv_pull import PullHint
from sharder.launch import write_ready_file
from sharder.pods import PodState

if TYPE_CHECKING:
    from sharder.security.client import ClientAuth
    from sharder.security.tokens import Credentials

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.5


class RuntimePod:
    """Serves one engine on 127.0.0.1 (HTTP + gRPC); reports to the assigners through a slicelet when given any."""

    def __init__(
        self,
        engine: Engine,
        *,
        pod_id: str,
        target: str = "",
        labels: Mapping[str, str] | None = None,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_host: str = "127.0.0.1",
        grpc_port: int = 0,
        assigners: Sequence[str] = (),
        report_interval_s: float = 1.0,
        lease_ttl_s: float = 5.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        ready_file: str | os.PathLike[str] | None = None,
        auth: ClientAuth | None = None,
        advertise: str | None = None,
        warm_timeout_s: float = 5.0,
        peer_credentials: Credentials | None = None,
    ) -> None:
        self.engine = engine
        self.prompt_log = PromptLog()  # what a warming peer asks this pod for (HotPrompts)
        self.warm_metrics = WarmMetrics()
        # what both surfaces serve: spans when they leave the process, outcomes counted for the load reports,
        # prompts recorded per SliceKey
        self.counted = CountedEngine(TracedEngine(engine))
        self.served = RecordingEngine(self.counted, self.prompt_log, self.warm_metrics)
        self.warm_timeout_s = warm_timeout_s
        self.peer_credentials = peer_credentials  # who may call HotPrompts (None: open, like Generate)
        self.warmer: Warmer | None = None
        self.pod_id = pod_id
        self.target = target
        self.labels = dict(labels or {})
        self.labels.setdefault("model", engine.model)
        self.http_host, self.http_port = http_host, http_port
        self.grpc_host, self.grpc_port = grpc_host, grpc_port
        self.assigners = list(assigners)
        self.report_interval_s = report_interval_s
        self.lease_ttl_s = lease_ttl_s
        self.max_body_bytes = max_body_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.ready_file = ready_file
        self.auth = auth  # the slicelet's pod token and CA (None: from the environment)
        self.advertise = advertise
        self.api: HttpApi | None = None
        self.slicelet: Any = None
        self.grpc: GrpcServer | None = None
        self._runner: web.AppRunner | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._restart_drain_checked = False
        self.addresses: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        """Serving new requests: the engine is up and the pod is not draining."""
        return self.engine.ready and not (self.api is not None and self.api.draining)

    def on_finish(self, slice_key: int | None, last: EngineChunk) -> None:
        """Attribute a finished request's work (uncached prompt + generated tokens) to its slice."""
        if self.slicelet is None or slice_key is None:
            return
        work = max(0, last.prompt_tokens - last.cached_tokens) + last.completion_tokens
        self.slicelet.record(slice_key, float(max(work, 1)))

    async def start(self) -> dict[str, str]:
        """Bind both surfaces (health says not ready), start the engine, then serve and write the ready file."""
        api = HttpApi(
            self.served, pod_id=self.pod_id, on_finish=self.on_finish, max_body_bytes=self.max_body_bytes,
            header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
        )  # fmt: skip
        self.api = api
        self._runner = api.runner(handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.http_host, self.http_port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        http_port = sockets[0].getsockname()[1] if sockets else self.http_port
        service = RuntimeService(
            self.served, pod_id=self.pod_id, labels=self.labels, on_finish=self.on_finish,
            prompt_log=self.prompt_log, warm_metrics=self.warm_metrics, peer_credentials=self.peer_credentials,
        )  # fmt: skip
        self.grpc = GrpcServer(service, self.grpc_host, self.grpc_port)
        await self.grpc.start()
        self.addresses = {  # what the pod tells others: the advertised host, not a wildcard bind host
            "grpc": host_port(advertise_host(self.grpc_host, self.advertise), self.grpc.port),
            "http": f"http://{host_port(advertise_host(self.http_host, self.advertise), http_port)}",
            "pod_id": self.pod_id,
        }
        log.info(
            "pod %s bound grpc=%s http=%s; starting engine", self.pod_id, self.grpc.address, self.addresses["http"]
        )
        await self.engine.start()
        await self.grpc.set_serving(self.ready)
        self._health_task = asyncio.create_task(self._watch_health(), name="runtime-health")
        if self.assigners:
            await self._start_slicelet()
        if self.ready_file is not None:
            write_ready_file(self.ready_file, self.addresses)
        log.info("pod %s serving model %s", self.pod_id, self.engine.model)
        return self.addresses

    async def _start_slicelet(self) -> None:
        from sharder.pods import Pod
        from sharder.slicelet import Slicelet  # only needed with --assigner; the pod runs standalone without it

        pod = Pod(
            id=self.pod_id, address=self.addresses["grpc"], labels=dict(self.labels),
            http_address=self.addresses["http"], target=self.target,
        )  # fmt: skip
        self.slicelet = sl = Slicelet(
            pod, self.assigners, engine_load=self.engine.load, outcomes=self.counted.outcomes,
            report_interval_s=self.report_interval_s,
            lease_ttl_s=self.lease_ttl_s, auth=self.auth,
        )  # fmt: skip
        # warm-up on reshard: prefill a donor's hottest prompts of each slice this pod gains (on the engine itself:
        # no slice key, not recorded, not traced as a client request)
        self.warmer = Warmer(
            self.engine, metadata=sl.auth.metadata, done=sl.mark_warm, metrics=self.warm_metrics,
            timeout_s=self.warm_timeout_s, priority=warm_priority(self.engine),
        )  # fmt: skip
        sl.on_warming = self.warmer.want
        if self.api is not None:
            self.api.pull = self._pull
        await sl.start()

    async def _pull(self, hint: PullHint, budget_s: float) -> bool:
        """A router's KV pull hint: read the request's prefix from the named peer when the assigner named that pod
        among this pod's peers (its latest report answer), within ``budget_s`` (``kv_pull.wait_budget_s``: none left,
        no read); a pod never calls an address a request gives it."""
        sl, w = self.slicelet, self.warmer
        if sl is None or w is None:
            return False
        addr = sl.peers.get(hint.pod_id) if hint.pod_id != self.pod_id else None
        if addr is None:
            self.warm_metrics.pulls.labels("unknown_peer").inc()
            return False
        if budget_s <= 0:
            self.warm_metrics.pulls.labels("no_time").inc()
            return False
        return await w.pull(addr, Slice(hint.lo, hint.hi), budget_s)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            if self.grpc is not None:
                await self.grpc.set_serving(self.ready)
            sl = self.slicelet
            if sl is not None and sl.registered and not self._restart_drain_checked:
                # once, on registration: a drain the assigner already held then was asked for by this pod id's last
                # process (its SIGTERM); a pod that (re)starts is ready to serve. A drain that comes later is an
                # operator's (or this process's own shutdown) and stands until undone.
                self._restart_drain_checked = True
                draining_self = self.api is not None and self.api.draining
                if sl.first_state is PodState.DRAINING and not draining_self:
                    await self._drain_rpc(undrain=True)

    async def drain(self, timeout_s: float) -> bool:
        """Shut down gracefully: readiness fails (``/ready`` 503, gRPC health NOT_SERVING), the assigner is asked
        to drain this pod (its slices move, make-before-break), then requests in flight get until ``timeout_s``.
        True when nothing was left in flight. ``stop`` follows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self.api is not None:
            self.api.draining = True
            log.info("pod %s draining: %d requests in flight", self.pod_id, self.api.inflight)
        if self.grpc is not None:
            with contextlib.suppress(Exception):
                await self.grpc.set_serving(False)
        if self.slicelet is not None and await self._drain_rpc(undrain=False):
            # wait for the slices to move (routers then send new sessions elsewhere), at most half the budget, and
            # not once the assigner says nothing can take them (the target's last pod)
            half = loop.time() + timeout_s / 2
            sl = self.slicelet
            while sl.slices and not sl.stranded and loop.time() < half:  # noqa: ASYNC110 - a poll with a deadline
                await asyncio.sleep(0.05)
            if sl.slices and sl.stranded:
                log.info("pod %s: nothing can take its %d slice(s); not waiting for them", self.pod_id, len(sl.slices))
        left = max(0.0, deadline - loop.time())
        ok = await self.api.drained(left) if self.api is not None else True
        log.info("pod %s drained (in flight left: %d)", self.pod_id, self.api.inflight if self.api else 0)
        return ok

    async def _drain_rpc(self, *, undrain: bool) -> bool:
        """Ask the assigners to (un)drain this pod (its pod token may drain only itself); True when one did."""
        from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc

        sl = self.slicelet
        req = assigner_pb2.DrainRequest(pod_id=self.pod_id, undrain=undrain)
        todo = list(self.assigners)
        tried: set[str] = set()
        while todo:
            addr = todo.pop(0)
            if addr in tried:
                continue
            tried.add(addr)
            ch = sl.auth.aio_channel(addr)
            try:
                stub = assigner_pb2_grpc.AssignerStub(ch)  # type: ignore[no-untyped-call]
                await stub.Drain(req, timeout=3.0, metadata=sl.auth.metadata)
                log.info("pod %s: assigner %s %s it", self.pod_id, addr, "undrained" if undrain else "drained")
                return True
            except grpc.aio.AioRpcError as exc:
                md: Any = exc.trailing_metadata()
                hint = md.get(LEADER_METADATA_KEY) if md is not None else None
                if isinstance(hint, bytes):
                    hint = hint.decode()
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and hint:
                    todo.insert(0, str(hint))
                    continue
                log.warning("pod %s: drain via %s failed: %s %s", self.pod_id, addr, exc.code().name, exc.details())
            finally:
                await ch.close(None)
        return False

    async def stop(self) -> None:
        """Stop taking requests (health NOT_SERVING), leave the assigner, stop the engine (what is still in flight
        fails fast: clients retry elsewhere), then the surfaces. A graceful shutdown calls ``drain`` first."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.api is not None:
            self.api.draining = True
        if self.grpc is not None:
            with contextlib.suppress(Exception):
                await self.grpc.set_serving(False)
        if self.warmer is not None:
            await self.warmer.stop()
        if self.slicelet is not None:
            try:
                await self.slicelet.stop(leave=True)
            except Exception:
                log.exception("slicelet stop failed")
        # fail what is still in flight fast (clients retry elsewhere), then close the surfaces
        await self.engine.stop()
        if self.grpc is not None:
            await self.grpc.stop(grace_s=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
