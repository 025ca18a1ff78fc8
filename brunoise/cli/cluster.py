"""`brunoise cluster up`: an assigner, sim runtimes and a router on loopback, a demo workload, a summary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import os
import pathlib
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from axon_router.auth import hash_key
from brunoise.cli.client import ENV_ASSIGNER, AdminClient, cluster_file, read_cluster_file, state_name
from brunoise.cli.credentials import init_credentials
from brunoise.cli.demo import DemoResult, run_demo
from brunoise.cli.output import CliError, console, err_console, fmt_pct, make_table, print_error
from brunoise_api.v1 import slicing_pb2
from sharder.launch import LaunchError, ManagedProcess, ProcessGroup, python_module, sigterm_unwinds
from sharder.security.client import ENV_TOKEN, ENV_TOKEN_FILE, ClientAuth
from sharder.security.tokens import new_token

#: Modules of the three server processes (each also installed as a console script).
ASSIGNER_MODULE = "sharder.assigner.main"
RUNTIME_MODULE = "runtime.main"
ROUTER_MODULE = "axon_router.main"
DEFAULT_MODEL = "brunoise-sim"


class Store(enum.StrEnum):
    """Where the assigner keeps assignments."""

    embedded = "embedded"
    etcd = "etcd"


class EngineKind(enum.StrEnum):
    """Which engine the runtimes wrap."""

    sim = "sim"
    vllm = "vllm"


@dataclasses.dataclass
class ClusterOptions:
    """What `cluster up` starts."""

    runtimes: int = 4
    store: Store = Store.embedded
    engine: EngineKind = EngineKind.sim
    time_scale: float = 1.0
    target: str = "chat"
    model: str = DEFAULT_MODEL
    slices: int = 16
    max_replicas: int = 2
    round_interval_s: float = 1.0
    log_dir: pathlib.Path | None = None
    ready_timeout_s: float = 60.0
    engine_args: tuple[str, ...] = ()
    runtime_args: tuple[str, ...] = ()
    assigner_args: tuple[str, ...] = ()
    router_args: tuple[str, ...] = ()


@dataclasses.dataclass
class RuntimeInfo:
    """One started runtime: its pod id and addresses."""

    pod_id: str
    grpc: str
    http: str


def _http_url(addr: str) -> str:
    return addr if addr.startswith(("http://", "https://")) else f"http://{addr}"


def vllm_engine_args(model: str, engine_args: tuple[str, ...]) -> list[str]:
    """``--engine-arg`` flags for the vLLM adapter: the user's, plus ``model_dir=MODEL`` unless they attach
    (``base_url=``) or name a model dir themselves."""
    keys = {a.split("=", 1)[0].strip().replace("-", "_") for a in engine_args}
    for a in engine_args:
        if "=" not in a:
            raise CliError(f"--engine-arg takes KEY=VALUE, got {a!r}", 2)
    args = list(engine_args)
    if not keys & {"model_dir", "base_url"}:
        if model == DEFAULT_MODEL:
            raise CliError("--engine vllm needs --model (a model dir or HF id to serve) "
                           "or --engine-arg base_url=http://HOST:PORT of a running vLLM server", 2)
        args.append(f"model_dir={model}")
    out: list[str] = []
    for a in args:
        out += ["--engine-arg", a]
    return out


def vllm_problem(engine_args: tuple[str, ...] = ()) -> str | None:
    """Why ``--engine vllm`` cannot work here, or None when vLLM looks usable (or a running server is named)."""
    if any(a.split("=", 1)[0].strip().replace("-", "_") in ("base_url", "python") for a in engine_args):
        return None
    python = os.environ.get("BRUNOISE_VLLM_PYTHON")
    if python is None:
        try:
            from runtime.engines.vllm import DEFAULT_VLLM_PYTHON
        except ImportError as exc:
            return f"--engine vllm: the vLLM adapter does not import here ({exc})"
        python = DEFAULT_VLLM_PYTHON
    if pathlib.Path(python).exists():
        return None
    return (
        f"--engine vllm needs vLLM: no interpreter at {python}; run scripts/setup_vllm.sh (CPU build in .venv-vllm), "
        "set BRUNOISE_VLLM_PYTHON to a python with vllm installed, pass --engine-arg base_url=URL of a running "
        "vLLM server, or use --engine sim"
    )


class LocalCluster:
    """Local processes on loopback: [etcd], one assigner, N runtimes, one router. Stopped by PID on close()."""

    def __init__(self, opts: ClusterOptions, on_step: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self._own_log_dir = opts.log_dir is None
        self.log_dir = opts.log_dir or pathlib.Path(tempfile.mkdtemp(prefix="brunoise-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.group = ProcessGroup()
        self.etcd: Any = None
        self.assigner_addr = ""
        self.router_http = ""
        self.router_grpc = ""
        self.runtimes: list[RuntimeInfo] = []
        self._step = on_step or (lambda _msg: None)
        self.tls_ca = ""
        self.admin_token = ""
        self.api_key = ""  # the router's demo API key (in the 0600 cluster file; the keys file holds its digest)
        self.api_keys_file = ""
        self._token_files: dict[str, pathlib.Path] = {}  # principal name -> its 0600 token file
        self.auth = ClientAuth()

    # credentials -------------------------------------------------------------------------------
    def _make_credentials(self) -> list[str]:
        """A CA + server certificate for 127.0.0.1/localhost, one token per role / per pod (``brunoise
        credentials init``) and the router's API keys file with one demo key, under the log dir; the assigner's
        flags for them. Children get their token as a file (``--token-file``), never in argv."""
        d = self.log_dir / "security"
        pods = [f"pod-{i}" for i in range(1, self.opts.runtimes + 1)]
        init_credentials(d, ["127.0.0.1", "localhost"], pods, admins=("cli",), readers=("router",))
        self._token_files = {p.name: p for p in (d / "tokens").iterdir()}
        pki = d / "pki"
        self.tls_ca = str(pki / "ca.pem")
        self.admin_token = self._token_files["cli"].read_text().strip()
        self.auth = ClientAuth(token=self.admin_token, ca_pem=(pki / "ca.pem").read_bytes())
        self.api_key = "sk-brunoise-" + new_token()
        keys = d / "api-keys.json"
        fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({hash_key(self.api_key): {"name": "demo"}}, f)
        self.api_keys_file = str(keys)
        return ["--credentials", str(d / "credentials.json"), "--tls-cert", str(pki / "server.pem"),
                "--tls-key", str(pki / "server.key")]  # fmt: skip

    def _auth_args(self, principal: str) -> list[str]:
        """``--token-file``/``--tls-ca`` of a runtime or router presenting ``principal``'s token."""
        return ["--token-file", str(self._token_files[principal]), "--tls-ca", self.tls_ca]

    @staticmethod
    def _child_env() -> dict[str, str]:
        """The environment without a token of the caller's (a child's own token comes by flag)."""
        return {k: v for k, v in os.environ.items() if k not in (ENV_TOKEN, ENV_TOKEN_FILE)}

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        o = self.opts
        if o.runtimes < 1:
            raise CliError("--runtimes must be at least 1", 2)
        engine_args: list[str] = []
        if o.engine == EngineKind.vllm:
            if why := vllm_problem(o.engine_args):
                raise CliError(why, 2)
            engine_args = vllm_engine_args(o.model, o.engine_args)
        etcd_args: list[str] = []
        if o.store == Store.etcd:
            self._step("starting etcd")
            try:
                from sharder.etcd_server import EtcdCluster
            except ImportError as exc:
                raise CliError(f"--store etcd is not available: {exc}") from None
            try:
                self.etcd = EtcdCluster(size=1)
                self.etcd.start()
            except LaunchError as exc:
                raise CliError(f"etcd did not start: {str(exc).splitlines()[0]}") from None
            for ep in self.etcd.endpoints:
                etcd_args += ["--etcd-endpoint", ep]

        self._step("starting the assigner")
        security = self._make_credentials()
        # the embedded store persists to a snapshot file: a restarted assigner keeps its generations
        snapshot = ["--snapshot", str(self.log_dir / "assigner-snapshot.json")] if o.store == Store.embedded else []
        assigner = self._proc(
            "assigner",
            python_module(ASSIGNER_MODULE, "--store", o.store.value, *etcd_args, *snapshot, "--port", "0",
                          "--id", "assigner-0", "--round-interval", f"{o.round_interval_s:g}", *security,
                          *o.assigner_args),
        )
        self.assigner_addr = self._ready(assigner)["grpc"]
        self._configure_target()

        self._step(f"starting {o.runtimes} {o.engine.value} runtimes")
        procs = []
        for i in range(1, o.runtimes + 1):
            pod_id = f"pod-{i}"
            argv = python_module(
                RUNTIME_MODULE, "--engine", o.engine.value, "--pod-id", pod_id, "--target", o.target, "--model", o.model,
                "--labels", f"model={o.model}", "--assigner", self.assigner_addr, *self._auth_args(pod_id),
                *self._time_scale_args(), *engine_args, *o.runtime_args,
            )
            procs.append((pod_id, self._proc(pod_id, argv, env=self._child_env())))
        for pod_id, p in procs:
            addrs = self._ready(p)
            self.runtimes.append(RuntimeInfo(pod_id, addrs.get("grpc", ""), _http_url(addrs.get("http", ""))))

        self._step("starting the router")
        router = self._proc(
            "router", python_module(ROUTER_MODULE, "--assigner", self.assigner_addr, "--http-port", "0", "--grpc-port", "0",
                                    "--wait-ready-s", "15", *self._auth_args("router"),
                                    "--api-keys-file", self.api_keys_file, *self.opts.router_args),
            env=self._child_env(),
        )
        addrs = self._ready(router)
        self.router_http = _http_url(addrs.get("http", ""))
        self.router_grpc = addrs.get("grpc", "")
        self._step("waiting for every pod to hold slices")
        self.wait_assigned()
        self.wait_router()

    def _time_scale_args(self) -> list[str]:
        return ["--time-scale", f"{self.opts.time_scale:g}"] if self.opts.engine == EngineKind.sim else []

    def _proc(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        return self.group.add(ManagedProcess(name, argv, env=env, log_dir=self.log_dir)).start()

    def _ready(self, p: ManagedProcess) -> dict[str, str]:
        try:
            return p.wait_ready(self.opts.ready_timeout_s)
        except LaunchError as exc:
            tail = str(exc).strip().splitlines()
            last = next((ln for ln in reversed(tail) if ln.strip()), "")
            raise CliError(f"{p.name} did not start ({tail[0] if tail else exc}); last log line: {last!r}; "
                           f"full log: {p.log_path}") from None

    def _configure_target(self, deadline_s: float = 20.0) -> None:
        """Create the demo target with a readable number of slices (retried until a leader is elected)."""
        cfg = slicing_pb2.TargetConfig(
            target=self.opts.target, model=self.opts.model, min_replicas=1, max_replicas=self.opts.max_replicas,
            imbalance_tolerance=0.10, churn_budget=0.10, split_threshold=0.25, merge_threshold=0.05,
            dereplicate_threshold=0.05, hot_key_fraction=0.5, min_slices_per_pod=0, max_slices_per_pod=1000,
            initial_slices=self.opts.slices,
        )
        deadline = time.monotonic() + deadline_s
        with AdminClient(self.assigner_addr, timeout_s=5.0, auth=self.auth) as c:
            while True:
                try:
                    c.configure_target(cfg)
                    return
                except CliError as exc:
                    if time.monotonic() > deadline:
                        raise CliError(f"could not configure target {self.opts.target!r}: {exc.message}") from None
                time.sleep(0.1)

    def wait_assigned(self, timeout_s: float = 45.0) -> slicing_pb2.Assignment:
        """Poll until the target's assignment lists every runtime and every slice has a replica.

        (Which pod holds which slice is the policy's business: with no load yet, slices may sit on few pods
        until the demo's load makes the rounds spread them.)"""
        want = {r.pod_id for r in self.runtimes}
        deadline = time.monotonic() + timeout_s
        last: slicing_pb2.Assignment | None = None
        with AdminClient(self.assigner_addr, timeout_s=5.0, auth=self.auth) as c:
            while time.monotonic() < deadline:
                with contextlib.suppress(CliError):
                    last = c.get_assignment(self.opts.target)
                    if want <= {p.id for p in last.pods} and all(s.replicas for s in last.slices):
                        return last
                time.sleep(0.1)
        if last is None:
            detail = "no assignment yet"
        else:
            empty = sum(1 for s in last.slices if not s.replicas)
            pods = ", ".join(f"{p.id}({state_name(p.state)})" for p in last.pods) or "none"
            detail = f"generation {last.generation}: pods {pods}; {empty} of {len(last.slices)} slices without a replica"
        raise CliError(f"the assigner did not place every slice on the pods within {timeout_s:g}s "
                       f"(want {sorted(want)}; {detail}); logs in {self.log_dir}")

    def wait_router(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Poll the router's /health until it knows the target and sees every runtime healthy."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{self.router_http}/health", timeout=2.0) as r:
                    last = json.loads(r.read())
                if self.opts.target in last.get("targets", []) and last.get("healthy_pods", 0) >= len(self.runtimes):
                    return last
            time.sleep(0.1)
        raise CliError(f"the router at {self.router_http} did not see {len(self.runtimes)} healthy pods within "
                       f"{timeout_s:g}s (last /health: {last}); logs in {self.log_dir}")

    def dead_children(self) -> list[ManagedProcess]:
        return [p for p in self.group.procs if not p.alive()]

    def close(self) -> None:
        """Stop every child by PID (router first, assigner and etcd last)."""
        self.group.stop_all()
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                self.etcd.close()
            self.etcd = None

    # records -----------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "assigner": self.assigner_addr,
            "admin_token": self.admin_token,  # the file is written 0600
            "api_key": self.api_key,  # the router's demo key: Authorization: Bearer KEY
            "tls_ca": self.tls_ca,
            "router_http": self.router_http,
            "router_grpc": self.router_grpc,
            "target": self.opts.target,
            "model": self.opts.model,
            "store": self.opts.store.value,
            "engine": self.opts.engine.value,
            "etcd_endpoints": list(self.etcd.endpoints) if self.etcd is not None else [],
            "runtimes": [dataclasses.asdict(r) for r in self.runtimes],
            "log_dir": str(self.log_dir),
            "started_unix": time.time(),
        }

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_cluster_file(rec: dict[str, Any]) -> pathlib.Path:
    path = cluster_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the admin token
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(rec, indent=2))
    os.replace(tmp, path)
    return path


def remove_cluster_file() -> None:
    """Remove the cluster file if this process wrote it."""
    path = cluster_file()
    with contextlib.suppress(OSError, json.JSONDecodeError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


# ----------------------------------------------------------------------------- printing
def print_endpoints(cl: LocalCluster) -> None:
    pids = {p.name: str(p.pid) for p in cl.group.procs}
    rows: list[tuple[str, str, str, str, str]] = []
    if cl.etcd is not None:
        epids = ",".join(str(p) for p in cl.etcd.pids() if p)
        rows.append(("etcd", "m0", ",".join(cl.etcd.endpoints), "1 member", epids))
    rows.append(("assigner", "assigner-0", cl.assigner_addr, f"store: {cl.opts.store.value}", pids.get("assigner", "")))
    for r in cl.runtimes:
        rows.append(("runtime", r.pod_id, r.grpc, r.http, pids.get(r.pod_id, "")))
    rows.append(("router", "router-0", cl.router_grpc, f"{cl.router_http}/v1 (OpenAI API)", pids.get("router", "")))
    console().print(make_table("brunoise cluster (loopback)", ["role", "name", "gRPC", "HTTP", "pid"], rows))


def slices_held(cl: LocalCluster) -> dict[str, int]:
    """Slices each pod holds now (replica or leaving), from the assigner's ListPods."""
    with contextlib.suppress(CliError), AdminClient(cl.assigner_addr, timeout_s=5.0, auth=cl.auth) as c:
        return {ps.pod.id: int(ps.slices_held) for ps in c.list_pods(cl.opts.target).pods}
    return {}


def summarize(cl: LocalCluster, res: DemoResult, before: dict[str, int] | None = None) -> None:
    """The demo's summary: requests, prefix hit rate, TTFT p50/p99, slices per pod (before -> after the demo)."""
    con = console()
    after = slices_held(cl)
    before = before or {}
    ok = res.requests - res.errors
    rows = [
        ("sessions x turns", f"{res.sessions} x {res.turns}"),
        ("requests", f"{res.requests} ({ok} ok, {res.errors} failed)"),
        ("duration", f"{res.duration_s:.1f}s ({ok / res.duration_s if res.duration_s else 0:.1f} req/s)"),
        ("prefix cache hit rate", f"{fmt_pct(res.hit_rate)} ({res.prefix_hits:.0f} of {res.prefix_queries:.0f} tokens)"),
        ("TTFT p50 / p99", f"{1000 * res.ttft_pct(0.5):.1f} ms / {1000 * res.ttft_pct(0.99):.1f} ms (client side)"),
    ]
    con.print(make_table("demo summary", ["", ""], rows, show_header=False))
    per_pod = [
        (r.pod_id,
         f"{before[r.pod_id]} -> {after.get(r.pod_id, '-')}" if r.pod_id in before else str(after.get(r.pod_id, "-")),
         fmt_pct(res.per_pod_hit_rate[r.pod_id]) if r.pod_id in res.per_pod_hit_rate else "-")
        for r in cl.runtimes
    ]
    con.print(make_table(None, ["pod", "slices (start -> end)", "hit rate"], per_pod,
                         right=["slices (start -> end)", "hit rate"]))
    if res.first_error:
        print_error(f"first failed request: {res.first_error}")


def print_next_steps(cl: LocalCluster, path: pathlib.Path) -> None:
    con = console()
    t = cl.opts.target
    con.print(f"\nexport {ENV_ASSIGNER}={cl.assigner_addr}   [dim](also recorded in {path})[/dim]", soft_wrap=True)
    con.print(f"try:  brunoise pods | brunoise slices {t} | brunoise keymap {t} --out keymap.png | brunoise watch {t}",
              soft_wrap=True)
    con.print(f"      curl -s {cl.router_http}/v1/chat/completions -H 'authorization: Bearer {cl.api_key}'"
              " -H 'x-session-id: s1' -H 'content-type: application/json'"
              f" -d '{{\"model\":\"{cl.opts.model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'",
              soft_wrap=True)
    con.print(f"[dim]logs: {cl.log_dir}[/dim]", soft_wrap=True)


def run_demo_with_progress(cl: LocalCluster, sessions: int, turns: int) -> DemoResult:
    total = sessions * turns
    pods_http = {r.pod_id: r.http for r in cl.runtimes if r.http}
    with Progress(TextColumn("[bold]demo[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console(), transient=False) as progress:
        task = progress.add_task(f"{sessions} sessions x {turns} turns", total=total)
        return asyncio.run(
            run_demo(cl.router_http, cl.opts.model, pods_http, sessions=sessions, turns=turns,
                     on_request=lambda: progress.advance(task), api_key=cl.api_key)
        )


def wait_until_interrupted(cl: LocalCluster) -> None:
    """Keep the cluster up until Ctrl-C (or SIGTERM); say so once when a child dies."""
    reported: set[str] = set()
    while True:
        for p in cl.dead_children():
            if p.name not in reported:
                reported.add(p.name)
                err_console().print(f"[yellow]{p.name} (pid {p.pid}) exited with {p.proc.returncode if p.proc else '?'};"
                                    f" log: {p.log_path}[/yellow]")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- the command
cluster_app = typer.Typer(help="A local brunoise cluster on loopback.", no_args_is_help=True)


@cluster_app.command("up")
def up(
    runtimes: Annotated[int, typer.Option("--runtimes", "-n", min=1, max=64, help="Runtime pods to start.")] = 4,
    sessions: Annotated[int, typer.Option("--sessions", min=0, help="Demo sessions (0: no demo).")] = 32,
    turns: Annotated[int, typer.Option("--turns", min=1, help="Turns per demo session.")] = 6,
    time_scale: Annotated[float, typer.Option("--time-scale", min=0.001, help="Sim engine speed-up (sim only).")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Exit after the demo instead of staying up.")] = False,
    store: Annotated[Store, typer.Option("--store", help="Assigner store: embedded, or etcd (starts a local etcd).")] = Store.embedded,
    engine: Annotated[EngineKind, typer.Option("--engine", help="sim, or vllm where vLLM is installed.")] = EngineKind.sim,
    model: Annotated[str, typer.Option("--model", help="Model served (with --engine vllm: a model dir or HF id).")] = DEFAULT_MODEL,
    engine_arg: Annotated[list[str] | None, typer.Option("--engine-arg", help="KEY=VALUE for the vLLM adapter (repeatable), e.g. base_url=http://host:8000.")] = None,
    target: Annotated[str, typer.Option("--target", help="Target name the pods serve.")] = "chat",
    slices: Annotated[int, typer.Option("--slices", min=1, help="Initial slices of the target.")] = 16,
    log_dir: Annotated[pathlib.Path | None, typer.Option("--log-dir", help="Where the processes log (default: a temp dir).")] = None,
) -> None:
    """Start an assigner, N runtimes and a router on loopback, run a demo workload, and stay up until Ctrl-C."""
    rec_path: pathlib.Path | None = None
    running = read_cluster_file()
    if running and not once:
        err_console().print(f"[yellow]note: another cluster (pid {running.get('pid')}) is recorded in "
                            f"{cluster_file()}; this one will replace the record[/yellow]")
    opts = ClusterOptions(runtimes=runtimes, store=store, engine=engine, time_scale=time_scale, target=target, model=model,
                          slices=slices, log_dir=log_dir, engine_args=tuple(engine_arg or ()))
    con = console()
    code = 0
    with sigterm_unwinds(lambda signum: KeyboardInterrupt()):
        cl = LocalCluster(opts, on_step=lambda m: con.print(f"[dim]… {m}[/dim]"))
        try:
            t0 = time.monotonic()
            cl.start()
            con.print(f"[green]cluster up in {time.monotonic() - t0:.1f}s[/green]")
            print_endpoints(cl)
            rec_path = write_cluster_file(cl.record())
            if sessions > 0:
                before = slices_held(cl)
                res = run_demo_with_progress(cl, sessions, turns)
                summarize(cl, res, before)
                if res.errors == res.requests and res.requests:
                    code = 1
            print_next_steps(cl, rec_path)
            if not once:
                con.print("[bold]cluster is up[/bold] — Ctrl-C to stop")
                wait_until_interrupted(cl)
        except CliError as exc:
            print_error(exc.message)
            code = exc.exit_code
        except KeyboardInterrupt:
            con.print("\nstopping…")
        finally:
            cl.close()
            if rec_path is not None:
                remove_cluster_file()
    if not code:
        con.print("[dim]every process stopped[/dim]")
    raise typer.Exit(code)


@cluster_app.command("down")
def down() -> None:
    """Stop the cluster a `brunoise cluster up` in another shell is running (SIGTERM to its PID)."""
    rec = read_cluster_file()
    if not rec or not isinstance(rec.get("pid"), int):
        print_error(f"no running cluster recorded in {cluster_file()}")
        raise typer.Exit(1)
    pid = int(rec["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if read_cluster_file() is None:
            console().print(f"stopped cluster (pid {pid})")
            return
        time.sleep(0.1)
    print_error(f"cluster (pid {pid}) did not stop within 30s")
    raise typer.Exit(1)


@cluster_app.command("status")
def status() -> None:
    """Where the running local cluster listens (from the cluster file)."""
    rec = read_cluster_file()
    if not rec:
        print_error(f"no running cluster recorded in {cluster_file()}")
        raise typer.Exit(1)
    sys.stdout.write(json.dumps(rec, indent=2) + "\n")
