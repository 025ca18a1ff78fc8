"""The engine interface every adapter implements (vLLM, simulated), and the request/response types it speaks."""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sharder.load import EngineLoad


class EngineError(Exception):
    """A request the engine refused or failed; ``status`` is the HTTP status a vLLM server would answer."""

    def __init__(self, message: str, *, status: int = 400, code: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param


class EngineUnavailable(EngineError):
    """The engine is not ready (starting, dead, restarting)."""

    def __init__(self, message: str = "engine is not ready"):
        super().__init__(message, status=503, code="ServiceUnavailableError")


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request, already validated by the serving surface.

    Exactly one of ``prompt`` and ``messages`` is set. ``slice_key`` is the SliceKey the router
    routed on (for per-slice load); ``traceparent`` is passed through to the engine when it has one.
    ``priority`` is vLLM's request priority (lower is served sooner under ``--scheduling-policy priority``; 0, the
    default, is what every client request gets). ``kv_transfer_params`` is vLLM's field of that name for a KV
    connector (NixlConnector's protocol): ``{"do_remote_decode": true}`` asks the engine to prefill and hold the
    prompt's KV blocks for a peer to read (the final chunk's ``kv_transfer_params`` say where), and a producer's
    answer sent back as is asks the engine to read those blocks instead of computing them. Only the warmer sends it,
    and only to an engine with ``kv_transfer``.
    """

    request_id: str
    prompt: str | None = None
    messages: Sequence[Mapping[str, object]] | None = None
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    slice_key: int | None = None
    traceparent: str | None = None
    priority: int = 0
    kv_transfer_params: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EngineChunk:
    """A piece of output. The first chunk arrives after prefill (its arrival is the time to first token);
    the last one carries ``finish_reason``, the token counts and, for a request that asked a KV connector to hold
    its blocks, the ``kv_transfer_params`` a peer reads them with."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    kv_transfer_params: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CacheView:
    """The compact cache summary routers use: the ``sharder.prefix`` chain hashes the engine holds."""

    chunk_bytes: int
    prefix_hashes: frozenset[int]
    blocks_total: int
    blocks_used: int
    epoch: int = 0
    block_tokens: int = 0  # tokens per KV cache block (vLLM's block_size); 0: not known
    #: Which start of the engine's cache this is (``Engine.new_incarnation``): routers forget what they sent a pod
    #: whose incarnation (or epoch) changed. 0: not known.
    incarnation: int = 0


class Engine(abc.ABC):
    """One inference engine replica."""

    model: str
    max_model_len: int
    #: The engine honours ``EngineRequest.priority`` (vLLM under ``--scheduling-policy priority``, which refuses a
    #: nonzero priority otherwise); the warmer sends its prefills at a later priority only then.
    priority_scheduling: bool = False
    #: The engine has a KV connector that moves prompt KV between engines (vLLM with ``--kv-transfer-config`` naming
    #: NixlConnector, role ``kv_both``): the warmer then copies a donor's KV instead of prefilling its prompts.
    kv_transfer: bool = False
    #: ``CacheView.incarnation`` of the engine's cache: set by ``new_incarnation`` when the engine starts (0: never).
    incarnation: int = 0

    def new_incarnation(self) -> None:
        """The engine (re)starts with an empty cache: a new ``incarnation``, the wall clock in nanoseconds (it differs
        between two starts of an engine on one pod: a restart takes longer than a nanosecond)."""
        self.incarnation = time.time_ns()

    @abc.abstractmethod
    async def start(self) -> None:
        """Start (or attach to) the engine; returns when it is ready or raises."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the engine and every process it started."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the engine serves requests now."""

    @abc.abstractmethod
    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the engine counts them."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        """Stream the output of one request; raises EngineError before the first chunk on bad input."""

    @abc.abstractmethod
    def load(self) -> EngineLoad:
        """The engine's load now (running, waiting, KV usage, tokens in flight, prefix hit rate)."""

    @abc.abstractmethod
    def cache_view(self) -> CacheView:
        """Which prefix chunks the engine holds now."""

    @abc.abstractmethod
    async def metrics_text(self) -> str:
        """Prometheus text exposition with vLLM's metric names (``vllm:...``)."""


class EngineProxy(Engine):
    """An engine in front of ``inner``: every call goes through unchanged; subclasses override what they add."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        """What an engine has beyond ``Engine`` (a vLLM pod's raw ``forward``) reads through, so a wrapper does not
        hide it (``runtime.proxy.is_upstream`` looks for ``forward``)."""
        if name == "inner":  # not set yet (during unpickling or a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def model(self) -> str:  # type: ignore[override]  # read through: vLLM learns its name at start
        return self.inner.model

    @property
    def max_model_len(self) -> int:  # type: ignore[override]
        return self.inner.max_model_len

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def priority_scheduling(self) -> bool:  # type: ignore[override]
        return self.inner.priority_scheduling

    @property
    def kv_transfer(self) -> bool:  # type: ignore[override]
        return self.inner.kv_transfer

    async def tokenize(self, text: str) -> list[int]:
        return await self.inner.tokenize(text)

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        return self.inner.generate(request)

    def load(self) -> EngineLoad:
        return self.inner.load()

    def cache_view(self) -> CacheView:
        return self.inner.cache_view()

    async def metrics_text(self) -> str:
        return await self.inner.metrics_text()
