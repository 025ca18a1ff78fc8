"""The vLLM engine adapter: starts (or attaches to) a vLLM OpenAI server, streams through it, and reads its load and KV cache.

What it does:

* **Process.** Either attaches to a running server (``base_url``) or starts
  ``python -m vllm.entrypoints.openai.api_server`` as a child (its own process group, killed by PID) with
  ``--enable-prefix-caching``, ``--kv-events-config`` (the adapter's ZMQ SUB socket binds a loopback port and vLLM's
  publisher connects to it) and, by default, ``--enforce-eager``; waits for ``/health`` under a deadline.
* **Supervision.** A monitor checks the child's exit and ``/health``; on death the engine is not ready, requests get
  ``EngineUnavailable`` (503), and the child is restarted with exponential backoff (bounded by
  ``restart_backoff_max_s``, reset after a healthy stretch). Deaths and restarts are counted.
* **Requests.** ``/v1/completions`` or ``/v1/chat/completions`` with ``stream=true`` and
  ``stream_options.include_usage``; SSE chunks become ``EngineChunk``; the last chunk carries the finish reason and
  the usage (``prompt_tokens_details.cached_tokens`` when vLLM reports it). vLLM's error bodies
  (``{"error": {"message", "type", "param", "code"}}``) become ``EngineError(status, message)``.
* **Load.** A background scrape of vLLM's ``/metrics`` (running, waiting, KV usage, prefix cache counters) plus the
  adapter's own in-flight requests, so load moves the moment a request is forwarded; ``load`` is an EWMA of tokens
  processed per second (prompt tokens not served from cache + generated tokens), the unit the simulated engine uses.
* **Cache view.** KV events fill a ``BlockView`` (exact engine blocks, parent links, token ids). Routers speak
  ``sharder.prefix`` chunk hashes (64-byte chunks of prompt text), which vLLM knows nothing of, so the adapter
  remembers, for each prompt it forwarded, the token ids of the prompt and for each chunk hash the number of tokens
  of the text up to that chunk's end (``len(tokenize(text[:end]))``, memoised per chunk hash so a shared prefix is
  tokenized once). A chunk hash is reported as held while the engine holds every full block up to that token
  position. Approximations: tokenizing a text prefix can differ from the prefix of the full tokenization at the
  boundary (a merge across the cut); a chunk that ends inside a block counts as held only once that block is full
  and held; only prompts seen by this adapter (bounded LRU) can be reported; a chat's chunk hashes come from
  ``render_chat`` while vLLM renders the model's own template (identical for the test model).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp

from runtime.engines.base import CacheView, Engine, EngineChunk, EngineError, EngineRequest, EngineUnavailable
from runtime.kv_events import BlockView, KvEventSubscriber
from runtime.metrics import EngineLifecycleMetrics
from runtime.proxy import Routing
from sharder import promtext
from sharder.launch import ManagedProcess
from sharder.load import EngineLoad
from sharder.prefix import CHUNK_BYTES, prefix_hashes, render_chat

log = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The interpreter of the isolated vLLM virtualenv made by scripts/setup_vllm.sh.
DEFAULT_VLLM_PYTHON = str(REPO_ROOT / ".venv-vllm" / "bin" / "python")


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: SIGKILL it when the adapter's process dies (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


class _ChildProcess(ManagedProcess):
    """The vLLM server child: its own process group (killed whole), and killed if the adapter dies."""

    def start(self) -> ManagedProcess:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        finally:
            log_file.close()
        return self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the child binds it; a lost race fails its start, which is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True, slots=True)
class VllmConfig:
    """How to reach (or start) one vLLM server.

    Set ``base_url`` to attach to a running server, or ``model_dir`` to start one. In attach mode KV events are
    read only when ``kv_events_endpoint`` is given (the server's ``--kv-events-config`` endpoint; the adapter
    connects when it names a wildcard/bound publisher with ``kv_events_bind=False``).
    """

    model_dir: str | None = None
    base_url: str | None = None
    served_model_name: str | None = None
    python: str = dataclasses.field(default_factory=lambda: os.environ.get("BRUNOISE_VLLM_PYTHON", DEFAULT_VLLM_PYTHON))
    host: str = "127.0.0.1"
    port: int = 0
    block_size: int | None = 32
    max_model_len: int | None = 2048
    dtype: str | None = None
    enforce_eager: bool = True
    kv_cache_space_gib: float = 1.0
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    log_dir: str | None = None
    kv_events: bool = True
    kv_events_endpoint: str | None = None
    kv_events_bind: bool = True
    kv_events_replay_endpoint: str | None = None
    kv_events_topic: str = "kv-events"
    start_timeout_s: float = 180.0
    request_timeout_s: float = 600.0
    health_interval_s: float = 0.5
    health_failures: int = 3
    metrics_interval_s: float = 0.5
    restart: bool = True
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    max_restarts: int | None = None
    capacity: float = 1.0
    load_half_life_s: float = 5.0
    hit_rate_window_s: float = 60.0
    remember_prompts: int = 1024
    max_chunks_per_prompt: int = 256
    chunk_bytes: int = CHUNK_BYTES
    #: The server moves KV between engines (a KV connector, e.g. ``--kv-transfer-config
    #: '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'``): warm-ups then read a donor's KV. On by itself when
    #: ``extra_args`` pass ``--kv-transfer-config``; set it for an attached server that has one.
    kv_transfer: bool = False
    #: vLLM's API key (``--api-key``): sent as ``Authorization: Bearer`` on every call and given to a started child
    #: by environment. Default: ``$VLLM_API_KEY``. Clients' own Authorization headers never reach vLLM.
    api_key: str | None = dataclasses.field(default_factory=lambda: os.environ.get("VLLM_API_KEY") or None)

    def validate(self) -> VllmConfig:
        """Raise ValueError naming the field unless the config is usable; return self."""
        if (self.model_dir is None) == (self.base_url is None):
            raise ValueError("set exactly one of model_dir (start vLLM) and base_url (attach to a running vLLM)")
        if self.model_dir is not None and not pathlib.Path(self.python).exists():
            raise ValueError(f"python: {self.python} does not exist; run scripts/setup_vllm.sh or pass --vllm-python")
        for name in ("start_timeout_s", "health_interval_s", "metrics_interval_s", "restart_backoff_s",
                     "restart_backoff_max_s", "capacity", "load_half_life_s", "hit_rate_window_s"):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if self.block_size is not None and self.block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {self.block_size}")
        return self


@dataclasses.dataclass(slots=True)
class VllmStats:
    """Counters of the adapter (process lifecycle, requests, scrapes)."""

    starts: int = 0
    deaths: int = 0
    restarts: int = 0
    failed_starts: int = 0
    requests: int = 0
    request_errors: int = 0
    scrapes: int = 0
    scrape_errors: int = 0
    tokenize_calls: int = 0


@dataclasses.dataclass(slots=True)
class _InFlight:
    prompt_tokens: int
    max_tokens: int
    generated: int = 0


class _Forwarded:
    """One request forwarded to vLLM (``VllmEngine.forward``): its response and the load hook."""

    __slots__ = ("engine", "key", "resp")

    def __init__(self, resp: aiohttp.ClientResponse, engine: VllmEngine, key: str) -> None:
        self.resp = resp
        self.engine = engine
        self.key = key

    def progress(self, tokens: int) -> None:
        self.engine._note_generated(self.key, tokens, first_prompt=False)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prompt:
    token_ids: tuple[int, ...]
    chunks: tuple[tuple[int, int], ...]  # (sharder.prefix chunk hash, tokens up to that chunk's end)


class VllmEngine(Engine):
    """A vLLM server behind the ``Engine`` interface (see the module docstring)."""

    def __init__(self, config: VllmConfig) -> None:
        self.config = config.validate()
        name = config.served_model_name
        if name is None and config.model_dir is not None:
            name = pathlib.Path(config.model_dir).name
        self.model = name or ""
        self.max_model_len = config.max_model_len or 0
        args = " ".join(config.extra_args).replace("=", " ").split()
        # vLLM refuses a nonzero request priority unless it schedules by priority
        self.priority_scheduling = any(
            a == "--scheduling-policy" and b == "priority" for a, b in itertools.pairwise(args)
        )
        self.kv_transfer = config.kv_transfer or "--kv-transfer-config" in args
        self.view = BlockView()
        self.stats = VllmStats()
        self.lifecycle = EngineLifecycleMetrics(lambda: self.model, lambda: dataclasses.asdict(self.stats))
        self.base_url = config.base_url.rstrip("/") if config.base_url else ""
        self.proc: ManagedProcess | None = None
        self.subscriber: KvEventSubscriber | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = False
        self._stopping = False
        self._monitor_task: asyncio.Task[None] | None = None
        self._scrape_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="brunoise-vllm-"))
        self._log_dir = pathlib.Path(config.log_dir) if config.log_dir else self._tmp
        self._replay_endpoint: str | None = config.kv_events_replay_endpoint
        self._port = 0
        # load
        self._inflight: dict[str, _InFlight] = {}
        self._scraped: dict[str, float] = {}
        self._scraped_text = ""
        self._hit_window: collections.deque[tuple[float, float, float]] = collections.deque()
        self._load_rate = 0.0
        self._load_t = time.monotonic()
        self.blocks_total = 0
        self.block_tokens = 0  # vLLM's block_size, from vllm:cache_config_info (0: not scraped yet)
        # cache view
        self._prompts: collections.OrderedDict[int, _Prompt] = collections.OrderedDict()
        self._chunk_tokens: collections.OrderedDict[tuple[bool, int], int] = collections.OrderedDict()
        self._cache_view: CacheView | None = None
        self._cache_view_key: tuple[int, ...] = ()
        self._prompts_version = 0

    # -- lifecycle --------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        """PID of the vLLM child (its process group leader), when this adapter started one."""
        return self.proc.pid if self.proc is not None and self.proc.proc is not None else None

    @property
    def log_path(self) -> pathlib.Path | None:
        """Where the vLLM child writes its output."""
        return self.proc.log_path if self.proc is not None else None

    async def start(self) -> None:
        self.new_incarnation()  # CacheView.incarnation: a (re)start's cache starts empty
        self._stopping = False
        cfg = self.config
        auth = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), headers=auth
        )
        if cfg.kv_events and (cfg.model_dir is not None or cfg.kv_events_endpoint):
            endpoint = cfg.kv_events_endpoint or "tcp://127.0.0.1:0"
            self.subscriber = KvEventSubscriber(
                self.view,
                endpoint=endpoint,
                bind=cfg.kv_events_bind,
                topic=cfg.kv_events_topic,
                replay_endpoint=cfg.kv_events_replay_endpoint,
            )
            await self.subscriber.start()
        try:
            if cfg.model_dir is not None:
                await self._spawn_and_wait()
            else:
                await self._wait_healthy(deadline=time.monotonic() + cfg.start_timeout_s)
                await self._discover()
                self._ready = True
        except BaseException:
            await self.stop()
            raise
        await self._scrape_once()
        self._scrape_task = asyncio.create_task(self._scrape_loop(), name="vllm-metrics-scrape")
        self._monitor_task = asyncio.create_task(self._monitor_loop(), name="vllm-monitor")

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        for task in (self._monitor_task, self._scrape_task, *self._bg):
            if task is not None:
                task.cancel()
        for task in (self._monitor_task, self._scrape_task, *self._bg):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._monitor_task = self._scrape_task = None
        self._bg.clear()
        await self._stop_child()
        if self.subscriber is not None:
            await self.subscriber.stop()
            self.subscriber = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _stop_child(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await asyncio.to_thread(proc.stop, 15.0)

    def _argv(self, port: int) -> list[str]:
        cfg = self.config
        assert cfg.model_dir is not None
        argv = [
            cfg.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", cfg.model_dir,
            "--served-model-name", self.model,
            "--host", cfg.host,
            "--port", str(port),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if cfg.enforce_eager:
            argv.append("--enforce-eager")
        if cfg.block_size is not None:
            argv += ["--block-size", str(cfg.block_size)]
        if cfg.max_model_len is not None:
            argv += ["--max-model-len", str(cfg.max_model_len)]
        if cfg.dtype is not None:
            argv += ["--dtype", cfg.dtype]
        if self.subscriber is not None:
            events: dict[str, Any] = {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": self.subscriber.endpoint,
                "topic": cfg.kv_events_topic,
            }
            if self._replay_endpoint:
                events["replay_endpoint"] = self._replay_endpoint
            argv += ["--kv-events-config", json.dumps(events)]
        argv += list(cfg.extra_args)
        return argv

    def _env(self) -> dict[str, str]:
        cfg = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
        for sub in ("cache", "hf", "tmp"):
            (self._tmp / sub).mkdir(exist_ok=True)
        env.update(
            {
                "VLLM_TARGET_DEVICE": "cpu",
                "VLLM_CPU_KVCACHE_SPACE": f"{cfg.kv_cache_space_gib:g}",
                "VLLM_CACHE_ROOT": str(self._tmp / "cache"),
                "HF_HOME": str(self._tmp / "hf"),
                "TMPDIR": str(self._tmp / "tmp"),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(cfg.env)
        if cfg.api_key:
            env["VLLM_API_KEY"] = cfg.api_key  # by environment, not argv: a key on a command line is public
        else:
            env.pop("VLLM_API_KEY", None)
        return env

    async def _spawn_and_wait(self) -> None:
        """Start the child and wait until it serves; raise EngineError (with the log tail) when it does not."""
        cfg = self.config
        # keep the port across restarts (a stable base_url for anyone attached); a fresh one after a failed start
        port = cfg.port or self._port or free_port(cfg.host)
        self._port = port
        self.base_url = f"http://{cfg.host}:{port}"
        if self.subscriber is not None:
            if cfg.kv_events_replay_endpoint is None:
                self._replay_endpoint = f"tcp://127.0.0.1:{free_port()}"
            self.subscriber.replay_endpoint = self._replay_endpoint
            self.subscriber.publisher_restarted()  # a new process publishes from seq 0 onto an empty cache
        self.view.reset()
        proc = _ChildProcess("vllm", self._argv(port), env=self._env(), log_dir=self._log_dir, ready_file=False)
        self.proc = proc
        self.stats.starts += 1
        log.info("starting vLLM: %s", " ".join(proc.argv))
        proc.start()
        try:
            await self._wait_healthy(deadline=time.monotonic() + cfg.start_timeout_s, proc=proc)
            await self._discover()
        except BaseException:
            self.stats.failed_starts += 1
            self._port = 0
            await self._stop_child()
            raise
        self._ready = True
        log.info("vLLM ready at %s (pid %d)", self.base_url, proc.pid)

    async def _wait_healthy(self, *, deadline: float, proc: ManagedProcess | None = None) -> None:
        while True:
            if proc is not None and not proc.alive():
                code = proc.proc.returncode if proc.proc is not None else None
                raise EngineError(f"vLLM exited with {code} while starting:\n{proc.log_tail()}", status=503,
                                  code="ServiceUnavailableError")  # fmt: skip
            if await self._health():
                return
            if time.monotonic() >= deadline:
                tail = proc.log_tail() if proc is not None else ""
                raise EngineError(f"vLLM at {self.base_url} not healthy in time\n{tail}", status=503,
                                  code="ServiceUnavailableError")  # fmt: skip
            await asyncio.sleep(0.25)

    async def _health(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{self.base_url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _discover(self) -> None:
        """Learn the served model name and max_model_len from /v1/models."""
        assert self._session is not None
        async with self._session.get(f"{self.base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
            body = await r.json(content_type=None)
        models = body.get("data") or []
        if not models:
            raise EngineError(f"vLLM at {self.base_url} serves no model", status=503, code="ServiceUnavailableError")
        chosen = next((m for m in models if m.get("id") == self.model), models[0])
        self.model = str(chosen.get("id"))
        if chosen.get("max_model_len"):
            self.max_model_len = int(chosen["max_model_len"])

    async def _monitor_loop(self) -> None:
        cfg = self.config
        failures = 0
        consecutive_restarts = 0
        healthy_since = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(cfg.health_interval_s)
            exited = self.proc is not None and not self.proc.alive()
            if not exited and await self._health():
                failures = 0
                if not self._ready:
                    self._ready = True
                    healthy_since = time.monotonic()
                if time.monotonic() - healthy_since > 60:
                    consecutive_restarts = 0
                continue
            if not exited:
                failures += 1
                if failures < cfg.health_failures:
                    continue
            if self._stopping:
                return
            if self._ready:
                self.stats.deaths += 1
                log.warning("vLLM at %s is down (%s)", self.base_url, "exited" if exited else "health checks failing")
            self._ready = False
            if cfg.model_dir is None or not cfg.restart:
                continue  # attach mode: keep polling until it answers again
            if cfg.max_restarts is not None and self.stats.restarts >= cfg.max_restarts:
                continue
            backoff = min(cfg.restart_backoff_max_s, cfg.restart_backoff_s * (2**consecutive_restarts))
            consecutive_restarts += 1
            await self._stop_child()
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            self.stats.restarts += 1
            try:
                await self._spawn_and_wait()
                failures = 0
                healthy_since = time.monotonic()
            except EngineError as exc:
                log.warning("vLLM restart failed: %s", exc.message[-2000:])

    # -- requests ---------------------------------------------------------------------------------------------------

    def _require_ready(self) -> aiohttp.ClientSession:
        if not self._ready or self._session is None:
            raise EngineUnavailable("the vLLM engine is not ready (starting or restarting); retry shortly or elsewhere")
        return self._session

    async def _post_json(self, path: str, body: Mapping[str, Any], timeout_s: float = 30.0) -> Any:
        session = self._require_ready()
        try:
            async with session.post(f"{self.base_url}{path}", json=body,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:  # fmt: skip
                if r.status != 200:
                    raise await _error_from_response(r)
                return await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(f"vLLM at {self.base_url} did not answer {path}: {exc}") from exc

    async def tokenize(self, text: str) -> list[int]:
        return await self._tokenize({"prompt": text, "add_special_tokens": True})

    async def tokenize_messages(self, messages: Sequence[Mapping[str, object]]) -> list[int]:
        """Token ids of a chat as vLLM's chat endpoint renders and tokenizes it."""
        return await self._tokenize({"messages": [dict(m) for m in messages], "add_generation_prompt": True})

    async def _tokenize(self, body: Mapping[str, Any]) -> list[int]:
        self.stats.tokenize_calls += 1
        out = await self._post_json("/tokenize", {"model": self.model, **body})
        return [int(t) for t in out.get("tokens", [])]

    def _body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if s.ignore_eos:
            body["ignore_eos"] = True
        if request.priority:
            body["priority"] = request.priority
        if request.kv_transfer_params is not None and self.kv_transfer:
            # vLLM answers a connector's kv_transfer_params only in a whole (non-streamed) response
            body["kv_transfer_params"] = dict(request.kv_transfer_params)
            body["stream"] = False
            del body["stream_options"]
        if request.messages is not None:
            body["messages"] = [dict(m) for m in request.messages]
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        return "/v1/completions", body

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        return self._generate(request)

    @contextlib.asynccontextmanager
    async def forward(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], routing: Routing
    ) -> AsyncIterator[_Forwarded]:
        """Send the client's bytes to vLLM unchanged (``runtime.proxy``); yields once vLLM's status and headers
        arrived. Counts the request in the load and records its prompt for the cache view, as ``generate`` does."""
        session = self._require_ready()
        key = f"fw-{self.stats.requests}-{id(body)}"
        self._inflight[key] = _InFlight(
            prompt_tokens=max(1, len(routing.text.encode()) // 4), max_tokens=routing.max_tokens
        )
        self.stats.requests += 1
        if routing.text:
            req = EngineRequest(request_id=key, prompt=None if routing.messages else routing.text,
                                messages=routing.messages)  # fmt: skip
            self._remember_later(req, routing.text)
        try:
            try:
                resp = await session.request(method, f"{self.base_url}{path}", data=body or None, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s,
                                                                           sock_connect=5))  # fmt: skip
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.stats.request_errors += 1
                raise EngineUnavailable(f"vLLM at {self.base_url} did not answer {path}: {exc}") from exc
            fw = _Forwarded(resp, self, key)
            if routing.text:
                self._note_generated(key, 0, first_prompt=True)
            try:
                yield fw
            finally:
                resp.release()
        finally:
            self._inflight.pop(key, None)

    async def _generate(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        if (request.prompt is None) == (request.messages is None):
            raise EngineError("send exactly one of 'prompt' and 'messages'", param="prompt")
        if request.messages is not None and not request.messages:
            raise EngineError("'messages' must hold at least one message", param="messages")
        session = self._require_ready()
        path, body = self._body(request)
        headers = {"X-Request-Id": request.request_id}
        if request.traceparent:
            headers["traceparent"] = request.traceparent
        text = request.prompt if request.prompt is not None else render_chat(request.messages or ())
        key = f"{request.request_id}#{id(request)}"
        self._inflight[key] = _InFlight(
            prompt_tokens=max(1, len(text.encode()) // 4), max_tokens=request.sampling.max_tokens
        )
        self.stats.requests += 1
        self._remember_later(request, text)
        streamed = False
        try:
            try:
                resp_cm = session.post(f"{self.base_url}{path}", json=body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s,
                                                                     sock_connect=5))  # fmt: skip
                async with resp_cm as resp:
                    if resp.status != 200:
                        raise await _error_from_response(resp)
                    if not body["stream"]:
                        whole = chunk_of_response(await resp.json())
                        self._note_generated(key, whole.completion_tokens, first_prompt=True)
                        streamed = True
                        yield whole
                        return
                    async for chunk in self._chunks(resp, key):
                        streamed = True
                        yield chunk
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if not streamed:
                    raise EngineUnavailable(f"vLLM at {self.base_url} failed before the first token: {exc}") from exc
                raise EngineError(f"vLLM stream broke after the first token: {exc}", status=502,
                                  code="BadGatewayError") from exc  # fmt: skip
        except EngineError:
            self.stats.request_errors += 1
            raise
        finally:
            self._inflight.pop(key, None)

    async def _chunks(self, resp: aiohttp.ClientResponse, key: str) -> AsyncIterator[EngineChunk]:
        """SSE ``data:`` lines -> EngineChunks; the finish chunk is held back until the usage chunk arrives."""
        pending: EngineChunk | None = None
        first = True
        buf = b""
        done = False
        async for piece in resp.content.iter_any():
            buf += piece
            while b"\n" in buf and not done:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    continue
                if "error" in obj:
                    err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
                    raise _error_from_body(err, 500)
                usage = obj.get("usage")
                for choice in obj.get("choices") or []:
                    piece_text = choice.get("text")
                    if piece_text is None:
                        piece_text = (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason")
                    if piece_text:
                        self._note_generated(key, 1, first_prompt=first)
                        first = False
                    if finish is not None:
                        pending = EngineChunk(text=piece_text, finish_reason=str(finish))
                    elif piece_text:
                        yield EngineChunk(text=piece_text)
                if usage:
                    prompt_tokens, completion, cached = usage_counts(usage)
                    fl = self._inflight.get(key)
                    if fl is not None:
                        fl.prompt_tokens = prompt_tokens
                    if first:  # the prompt's work was not counted yet (no text chunk)
                        self._note_generated(key, 0, first_prompt=True)
                        first = False
                    last = pending or EngineChunk(text="", finish_reason="stop")
                    yield dataclasses.replace(last, prompt_tokens=prompt_tokens, completion_tokens=completion,
                                              cached_tokens=cached)  # fmt: skip
                    pending = None
            if done:
                break
        if pending is not None:  # no usage chunk (an older server): the finish chunk without counts
            yield pending

    def _note_generated(self, key: str, n: int, *, first_prompt: bool) -> None:
        fl = self._inflight.get(key)
        tokens = n
        if fl is not None:
            fl.generated += n
            if first_prompt:
                tokens += fl.prompt_tokens
        self._add_load(tokens)

    def _add_load(self, tokens: float) -> None:
        now = time.monotonic()
        rate = self._decayed_load(now)
        self._load_rate = rate + tokens * math.log(2) / self.config.load_half_life_s
        self._load_t = now

    def _decayed_load(self, now: float) -> float:
        dt = max(0.0, now - self._load_t)
        return self._load_rate * math.exp(-math.log(2) * dt / self.config.load_half_life_s)

    # -- load and metrics -------------------------------------------------------------------------------------------

    def load(self) -> EngineLoad:
        s = self._scraped
        running = int(s.get("vllm:num_requests_running", 0))
        waiting = int(s.get("vllm:num_requests_waiting", 0))
        inflight = len(self._inflight)
        if inflight > running + waiting:  # the scrape lags: requests just forwarded are at least waiting
            waiting += inflight - (running + waiting)
        kv = s.get("vllm:kv_cache_usage_perc", s.get("vllm:gpu_cache_usage_perc", 0.0))
        tokens = sum(max(0, f.prompt_tokens + f.max_tokens - f.generated) for f in self._inflight.values())
        return EngineLoad(
            running=running,
            waiting=waiting,
            kv_usage=min(1.0, max(0.0, kv)),
            tokens_in_flight=tokens,
            prefix_hit_rate=self._hit_rate(),
            capacity=self.config.capacity,
            load=self._decayed_load(time.monotonic()),
        )

    @property
    def in_flight(self) -> int:
        """Requests this adapter has forwarded and not finished."""
        return len(self._inflight)

    def _hit_rate(self) -> float:
        w = self._hit_window
        if len(w) < 2:
            return 0.0
        dq = w[-1][1] - w[0][1]
        dh = w[-1][2] - w[0][2]
        if dq <= 0:
            # no queries in the window: the lifetime ratio
            q, h = w[-1][1], w[-1][2]
            return min(1.0, max(0.0, h / q)) if q > 0 else 0.0
        return min(1.0, max(0.0, dh / dq))

    def prefix_cache_counters(self) -> tuple[float, float]:
        """vLLM's ``(prefix_cache_queries_total, prefix_cache_hits_total)`` as last scraped."""
        s = self._scraped
        return s.get("vllm:prefix_cache_queries_total", 0.0), s.get("vllm:prefix_cache_hits_total", 0.0)

    async def metrics_text(self) -> str:
        """vLLM's own exposition (fresh, else as last scraped) followed by the adapter's supervision counters."""
        text = self._scraped_text
        if self._ready and self._session is not None:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                text = await self._fetch_metrics()
        if text and not text.endswith("\n"):
            text += "\n"
        return text + self.lifecycle.text()

    async def _fetch_metrics(self) -> str:
        assert self._session is not None
        async with self._session.get(f"{self.base_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
        if r.status == 200:
            self._ingest_metrics(text)
        return text

    def _ingest_metrics(self, text: str) -> None:
        try:
            parsed = promtext.samples(text)
        except ValueError:  # not the exposition format: keep the last good reading
            self.stats.scrape_errors += 1
            return
        values, infos = promtext.sum_by_name(parsed), promtext.info_labels(parsed)
        self._scraped = values
        self._scraped_text = text
        self.stats.scrapes += 1
        info = infos.get("vllm:cache_config_info", {})
        with contextlib.suppress(ValueError, TypeError):
            self.blocks_total = int(info.get("num_gpu_blocks", "0") or 0)
        with contextlib.suppress(ValueError, TypeError):
            self.block_tokens = int(info.get("block_size", "0") or 0)
        now = time.monotonic()
        q, h = self.prefix_cache_counters()
        w = self._hit_window
        if w and q < w[-1][1]:
            w.clear()  # a restarted engine: counters start again
        w.append((now, q, h))
        while len(w) > 2 and now - w[0][0] > self.config.hit_rate_window_s:
            w.popleft()

    async def _scrape_once(self) -> None:
        if self._session is None or not self._ready:
            return
        try:
            await self._fetch_metrics()
        except (TimeoutError, aiohttp.ClientError, OSError):
            self.stats.scrape_errors += 1

    async def _scrape_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.metrics_interval_s)
            await self._scrape_once()

    # -- cache view -------------------------------------------------------------------------------------------------

    async def predict_cached_tokens(self, prompt: str | Sequence[Mapping[str, object]]) -> int:
        """Prompt tokens vLLM will serve from its prefix cache for ``prompt`` now, from the KV-event block view.

        vLLM never reuses the block holding the prompt's last token (it needs that token's logits), so the
        prediction is the held full-block prefix capped at ``floor((n - 1) / block_size) * block_size``.
        """
        tokens = await (self.tokenize(prompt) if isinstance(prompt, str) else self.tokenize_messages(prompt))
        return self.cached_tokens_for(tokens)

    def cached_tokens_for(self, token_ids: Sequence[int]) -> int:
        """``predict_cached_tokens`` for already tokenized input."""
        bs = self.view.block_size
        if bs <= 0 or not token_ids:
            return 0
        held = self.view.cached_prefix_tokens(token_ids)
        return min(held, ((len(token_ids) - 1) // bs) * bs)

    def cache_view(self) -> CacheView:
        key = (
            self.view.version, self.view.epoch, self._prompts_version, self.blocks_total, self.block_tokens,
            self.incarnation,
        )  # fmt: skip
        if self._cache_view is None or key != self._cache_view_key:
            held: set[int] = set()
            for p in self._prompts.values():
                cached = self.view.cached_prefix_tokens(p.token_ids)
                if cached <= 0:
                    continue
                for h, end in p.chunks:
                    if end > cached:
                        break
                    held.add(h)
            self._cache_view = CacheView(
                chunk_bytes=self.config.chunk_bytes,
                prefix_hashes=frozenset(held),
                blocks_total=self.blocks_total,
                blocks_used=self.view.blocks,
                epoch=self.view.epoch,
                block_tokens=self.block_tokens or max(0, self.view.block_size),
                incarnation=self.incarnation,
            )
            self._cache_view_key = key
        return self._cache_view

    def _remember_later(self, request: EngineRequest, text: str) -> None:
        if self.config.remember_prompts <= 0:
            return
        task = asyncio.create_task(self._remember(request, text))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def remember_prompt(self, prompt: str | Sequence[Mapping[str, object]]) -> None:
        """Record a prompt's chunk-hash -> token-position map (done for every forwarded request)."""
        if isinstance(prompt, str):
            await self._remember(EngineRequest(request_id="remember", prompt=prompt), prompt)
        else:
            await self._remember(EngineRequest(request_id="remember", messages=prompt), render_chat(prompt))

    async def _remember(self, request: EngineRequest, text: str) -> None:
        cfg = self.config
        try:
            data = text.encode("utf-8")
            hashes = prefix_hashes(data, cfg.chunk_bytes, max_chunks=cfg.max_chunks_per_prompt)
            if not hashes:
                return
            pkey = hash((request.messages is not None, hashes[-1], len(data)))
            if pkey in self._prompts:
                self._prompts.move_to_end(pkey)
                return
            chat = request.messages is not None
            if chat:
                token_ids = await self.tokenize_messages(request.messages or ())
            else:
                token_ids = await self.tokenize(text)
            chunks: list[tuple[int, int]] = []
            for i, h in enumerate(hashes):
                ck = (chat, h)
                end = self._chunk_tokens.get(ck)
                if end is None:
                    prefix = data[: (i + 1) * cfg.chunk_bytes].decode("utf-8", errors="ignore")
                    end = len(await self._tokenize({"prompt": prefix, "add_special_tokens": not chat}))
                    self._chunk_tokens[ck] = end
                    if len(self._chunk_tokens) > cfg.remember_prompts * 64:
                        self._chunk_tokens.popitem(last=False)
                else:
                    self._chunk_tokens.move_to_end(ck)
                chunks.append((h, min(end, len(token_ids))))
            self._prompts[pkey] = _Prompt(token_ids=tuple(token_ids), chunks=tuple(chunks))
            while len(self._prompts) > cfg.remember_prompts:
                self._prompts.popitem(last=False)
            self._prompts_version += 1
        except EngineError as exc:
            log.debug("could not map prompt chunks to tokens: %s", exc.message)


async def _error_from_response(resp: aiohttp.ClientResponse) -> EngineError:
    raw = await resp.text()
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return _error_from_body(err, resp.status)
        if isinstance(body.get("detail"), str | list):  # FastAPI validation errors
            return EngineError(str(body["detail"]), status=resp.status)
    if resp.status == 503:
        return EngineUnavailable(raw.strip()[:500] or "vLLM is unavailable")
    return EngineError(raw.strip()[:2000] or f"vLLM answered HTTP {resp.status}", status=resp.status,
                       code="InternalServerError" if resp.status >= 500 else "BadRequestError")  # fmt: skip


def _error_from_body(err: Mapping[str, Any], default_status: int) -> EngineError:
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else default_status
    if status == 503:
        return EngineUnavailable(str(err.get("message") or "vLLM is unavailable"))
    param = err.get("param")
    return EngineError(
        str(err.get("message") or "vLLM refused the request"),
        status=status,
        code=str(err.get("type") or ("InternalServerError" if status >= 500 else "BadRequestError")),
        param=str(param) if param is not None else None,
    )


def config_from_args(model: str | None, engine_args: Mapping[str, str]) -> VllmConfig:
    """A ``VllmConfig`` from ``--model`` and ``--engine-arg KEY=VALUE`` pairs (keys are field names, ``-`` or ``_``).

    ``extra_args`` is split like a shell line; ``env`` takes ``K=V;K=V``; booleans take 1/0, true/false, yes/no.
    Example: ``--engine-arg model_dir=/models/tiny --engine-arg block_size=32 --engine-arg extra_args="--seed 1"``.
    """
    import shlex

    fields = {f.name: f for f in dataclasses.fields(VllmConfig)}
    defaults = VllmConfig(model_dir="-")
    kwargs: dict[str, Any] = {}
    for raw_key, value in engine_args.items():
        key = raw_key.strip().replace("-", "_")
        if key not in fields:
            raise ValueError(f"unknown vllm engine arg {raw_key!r}; known: {', '.join(sorted(fields))}")
        current = getattr(defaults, key)
        v: Any
        if key == "extra_args":
            v = tuple(shlex.split(value))
        elif key == "env":
            v = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
        elif isinstance(current, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"{raw_key} must be a boolean (true/false), got {value!r}")
            v = value.lower() in ("1", "true", "yes", "on")
        elif key in ("block_size", "max_model_len", "max_restarts", "port", "remember_prompts",
                     "max_chunks_per_prompt", "chunk_bytes", "health_failures"):  # fmt: skip
            v = (
                None
                if value.lower() in ("", "none") and key in ("block_size", "max_model_len", "max_restarts")
                else int(value)
            )
        elif isinstance(current, float):
            v = float(value)
        else:
            v = value if value.lower() != "none" else None
        kwargs[key] = v
    if model is not None and "served_model_name" not in kwargs:
        kwargs["served_model_name"] = model
    return VllmConfig(**kwargs).validate()


def chunk_of_response(obj: Mapping[str, Any]) -> EngineChunk:
    """A whole (non-streamed) completion or chat completion response of vLLM as one final chunk, with the
    ``kv_transfer_params`` a KV connector answered (None when it answered none)."""
    choices = obj.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    text = choice.get("text")
    if text is None:
        text = (choice.get("message") or {}).get("content") or ""
    prompt_tokens, completion, cached = usage_counts(obj.get("usage") or {})
    params = obj.get("kv_transfer_params")
    return EngineChunk(
        text=str(text), finish_reason=str(choice.get("finish_reason") or "stop"), prompt_tokens=prompt_tokens,
        completion_tokens=completion, cached_tokens=cached, kv_transfer_params=params if isinstance(params, dict) else None,
    )  # fmt: skip


def usage_counts(usage: Mapping[str, Any]) -> tuple[int, int, int]:
    """Prompt, completion and cached prompt tokens of a vLLM ``usage`` object (streamed or whole)."""
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


def from_cli(model: str | None, engine_args: Mapping[str, str]) -> VllmEngine:
    """The factory ``brunoise-runtime --engine vllm`` calls (see ``config_from_args`` for the keys)."""
    try:
        return VllmEngine(config_from_args(model, engine_args))
    except (ValueError, TypeError) as e:
        raise SystemExit(f"brunoise-runtime: vllm engine: {e}") from None
