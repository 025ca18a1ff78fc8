"""Admin commands: targets, slices, pods, history, explain, watch, drain, move, split, merge, clear, keymap."""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.text import Text

from brunoise.cli import keymap as keymap_mod
from brunoise.cli.client import (
    AdminClient,
    assignment_dict,
    config_dict,
    hi_of,
    override_dict,
    pod_dict,
    pod_status_dict,
    resolve_assigner,
    scalars,
    slice_dict,
)
from brunoise.cli.output import (
    KEYSPACE_END,
    CliError,
    OutputFormat,
    console,
    fmt_age_ms,
    fmt_float,
    fmt_key,
    fmt_pct,
    fmt_range,
    fmt_share,
    fmt_time_ms,
    make_table,
    parse_key,
    print_error,
    print_json,
    print_json_line,
)
from brunoise_api.v1 import slicing_pb2
from sharder.keyspace import group_slice_key, join_parts, key_parts, session_bits

P = ParamSpec("P")
R = TypeVar("R")

AssignerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--assigner",
        "-a",
        help="Assigner gRPC address; repeat it (or separate by commas) to name several replicas, tried in order, "
        "writes following the leader (default: $BRUNOISE_ASSIGNER, else the running `cluster up`, else "
        "127.0.0.1:50051).",
        show_default=False,
    ),
]
OutputOpt = Annotated[OutputFormat, typer.Option("--output", "-o", help="table (default) or json.")]
TargetArg = Annotated[str, typer.Argument(help="Target name (see `brunoise targets`).")]
SliceKeyFlag = Annotated[
    bool, typer.Option("--slice-key", "-k", help="KEY is a SliceKey (decimal or 0x-hex), not an app key to hash.")
]


YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")]


def stdin_is_a_terminal() -> bool:
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Go on when ``yes``, else ask on the terminal; without one (a script, CI) refuse rather than guess."""
    if yes:
        return
    if not stdin_is_a_terminal():
        raise CliError(f"{question.rstrip('?')}: refusing without a terminal to confirm on; pass --yes", 2)
    if not typer.confirm(question, default=False, err=True):
        raise CliError("not confirmed; nothing changed", 1)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command; a CliError (or anything unexpected) becomes one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            print_error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:  # never a traceback in the user's face
            print_error(f"{type(exc).__name__}: {exc}")
            raise typer.Exit(1) from None

    return wrapper


def _client(assigner: list[str] | None) -> AdminClient:
    return AdminClient(resolve_assigner(assigner))


def _require(value: str, what: str) -> str:
    if not value.strip():
        raise CliError(f"{what} must not be empty", 2)
    return value


def _slice_key_of(client: AdminClient, target: str, key: str, is_slice_key: bool) -> int:
    """A SliceKey from the command line: parsed when --slice-key, else hashed by the assigner (ExplainKey)."""
    if is_slice_key:
        k = parse_key(key)
        if k >= KEYSPACE_END:
            raise CliError("a key must be below 2^64", 2)
        return k
    return int(client.explain(target, app_key=key).slice_key)


def _override_id(given: str, kind: str) -> str:
    """The id given with --id, else a fresh ``kind-xxxxxx``."""
    return given.strip() or f"{kind}-{uuid.uuid4().hex[:6]}"


def _find_slice(a: slicing_pb2.Assignment, key: int) -> slicing_pb2.SliceAssignment | None:
    for sa in a.slices:
        if sa.slice.lo <= key < hi_of(sa.slice):
            return sa
    return None


def _replicas_text(sa: slicing_pb2.SliceAssignment) -> Text:
    t = Text()
    for i, r in enumerate(sa.replicas):
        t.append(("," if i else "") + r + ("*" if r in sa.warming else ""), style="cyan" if r in sa.warming else None)
    if not sa.replicas:
        t.append("-")
    if sa.leaving:
        t.append("  ← " + ",".join(sa.leaving) + " leaving", style="yellow")
    return t


def _print_slices(a: slicing_pb2.Assignment, highlight: int | None = None) -> None:
    g = int(a.generation)
    table = make_table(
        f"target {a.target} — generation {g}, {len(a.slices)} slices",
        ["#", "range", "share", "replicas", "load", "age", "state"],
        [],
        right=["#", "share", "load", "age"],
    )
    for i, sa in enumerate(a.slices):
        hi = hi_of(sa.slice)
        state = (
            "moving" if sa.leaving else "warming" if sa.warming else ("unassigned" if not sa.replicas else "stable")
        )
        style = "bold reverse" if highlight is not None and sa.slice.lo <= highlight < hi else None
        table.add_row(
            str(i),
            fmt_range(int(sa.slice.lo), hi),
            fmt_share(int(sa.slice.lo), hi),
            _replicas_text(sa),
            fmt_float(sa.load),
            str(max(0, g - int(sa.since_generation))),
            Text(state, style="yellow" if state != "stable" else "green"),
            style=style,
        )
    console().print(table)
    if any(sa.warming for sa in a.slices):
        console().print("* warming: the replica prefills the slice's hot prompts; no new sessions while a warm one can")
    if a.overrides:
        console().print("overrides: " + "; ".join(_override_text(o) for o in a.overrides))


def _override_text(o: slicing_pb2.Override) -> str:
    d = override_dict(o)
    if d["kind"] == "move":
        return f"{d['id']}: move key {fmt_key(d['key'])} → {','.join(d['pods'])}"
    if d["kind"] == "split":
        return f"{d['id']}: split at {fmt_key(d['at'])}"
    if d["kind"] == "merge":
        return f"{d['id']}: merge {fmt_range(d['lo'], d['hi'])}"
    return f"{d['id']}: {d['kind']}"


# ----------------------------------------------------------------------------- read commands
@cli_errors
def targets(assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """List targets: generation, slices, pods, replica bounds."""
    with _client(assigner) as c:
        resp = c.list_targets()
    if output == OutputFormat.json:
        print_json(
            {
                "leader_id": resp.leader_id,
                "targets": [
                    {"target": t.target, "generation": int(t.generation), "slices": t.slices, "pods": t.pods,
                     "config": config_dict(t.config)}
                    for t in resp.targets
                ],
            }
        )
        return
    rows = [
        (t.target, t.config.model or "-", t.generation, t.slices, t.pods, f"{t.config.min_replicas}..{t.config.max_replicas}")
        for t in resp.targets
    ]
    console().print(make_table(None, ["target", "model", "generation", "slices", "pods", "replicas"], rows,
                               right=["generation", "slices", "pods"]))
    if not resp.targets:
        console().print("no targets yet (a target appears when its first pod registers)")
    if resp.leader_id:
        console().print(f"[dim]leader: {resp.leader_id}[/dim]")


@cli_errors
def slices(
    target: TargetArg,
    generation: Annotated[int, typer.Option("--generation", "-g", help="A past generation (0: current).")] = 0,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """The slices of a target: range, replicas (leaving pods shown), load, age in generations, state."""
    with _client(assigner) as c:
        a = c.get_assignment(_require(target, "TARGET"), generation)
    if output == OutputFormat.json:
        d = assignment_dict(a)
        print_json({k: d[k] for k in ("target", "generation", "created_unix_ms", "slices", "overrides", "stats")})
        return
    _print_slices(a)


@cli_errors
def pods(
    target: Annotated[str, typer.Option("--target", "-t", help="Only pods of this target.")] = "",
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Pods: state, load, slices held, prefix-cache hit rate, last report."""
    with _client(assigner) as c:
        resp = c.list_pods(target)
    if output == OutputFormat.json:
        print_json({"pods": [pod_status_dict(p) for p in resp.pods]})
        return
    table = make_table(
        None,
        ["pod", "target", "state", "address", "load", "running", "waiting", "kv", "slices", "slice load", "hit rate", "reported"],
        [],
        right=["load", "running", "waiting", "kv", "slices", "slice load", "hit rate"],
    )
    for ps in resp.pods:
        d = pod_dict(ps.pod)
        color = {"active": "green", "draining": "yellow", "dead": "red"}.get(d["state"], "white")
        table.add_row(
            d["id"], d["target"], Text(d["state"], style=color), d["address"], fmt_float(ps.engine.load),
            str(ps.engine.running), str(ps.engine.waiting), fmt_pct(ps.engine.kv_usage), str(ps.slices_held),
            fmt_float(ps.slice_load), fmt_pct(ps.engine.prefix_hit_rate), fmt_age_ms(int(ps.last_report_unix_ms)),
        )
    console().print(table)
    if not resp.pods:
        console().print("no pods registered")


@cli_errors
def history(
    target: TargetArg,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Most recent N generations (0: all kept).")] = 20,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """What each recent policy round did: moves, splits, merges, replications, churn, imbalance."""
    with _client(assigner) as c:
        resp = c.history(_require(target, "TARGET"), limit=max(0, limit))
    entries = sorted(resp.entries, key=lambda e: e.generation)
    if output == OutputFormat.json:
        print_json(
            {"target": target, "entries": [
                {"generation": int(e.generation), "created_unix_ms": int(e.created_unix_ms), "slices": e.slices,
                 "stats": scalars(e.stats)}
                for e in entries
            ]}
        )
        return
    cols = ["gen", "time", "slices", "moves", "splits", "merges", "repl", "derepl", "fills", "dropped", "churn", "imbalance"]
    rows = [
        (e.generation, fmt_time_ms(int(e.created_unix_ms)), e.slices, e.stats.moves, e.stats.splits, e.stats.merges,
         e.stats.replications, e.stats.dereplications, e.stats.fills, e.stats.dropped_pods, fmt_pct(e.stats.churn),
         fmt_float(e.stats.imbalance))
        for e in entries
    ]
    console().print(make_table(f"history of {target}", cols, rows, right=[c for c in cols if c != "time"]))


def _grouped_key(key: str, tenant: str, group: str) -> tuple[int, str]:
    """The SliceKey of ``key`` in a tenant's or a group's range (grouped layout), and how it was made."""
    if tenant and group:
        raise CliError("give --tenant or --group, not both", 2)
    if tenant:
        return group_slice_key(_require(tenant, "--tenant"), key), f"session {key!r} in tenant {tenant!r}"
    try:
        part = int(group, 16)
    except ValueError:
        raise CliError(
            f"--group must be the group part in hex (8 digits, as the router logs it), got {group!r}", 2
        ) from None
    if not 0 <= part < 1 << 32:
        raise CliError("--group must be below 2^32 (8 hex digits)", 2)
    return join_parts(part, session_bits(key)), f"session {key!r} in group {part:08x}"


@cli_errors
def explain(
    target: TargetArg,
    key: Annotated[str, typer.Argument(help="App key (session id, user, ...) or, with --slice-key, a SliceKey.")],
    slice_key: SliceKeyFlag = False,
    tenant: Annotated[
        str, typer.Option("--tenant", help="The key is a session of this tenant (x-tenant-id): grouped layout.")
    ] = "",
    group: Annotated[
        str, typer.Option("--group", help="The key is a session of this group (its part in hex, as routers log it).")
    ] = "",
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Where a key goes and why: its SliceKey (group and session parts), the slice holding it, the replicas."""
    how = "app key, hashed whole with xxh3_64 (flat layout)"
    with _client(assigner) as c:
        if slice_key:
            if tenant or group:
                raise CliError("--slice-key is a whole SliceKey: leave out --tenant / --group", 2)
            resp = c.explain(_require(target, "TARGET"), slice_key=_slice_key_of(c, target, key, True))
            how = "SliceKey"
        elif tenant or group:
            k, how = _grouped_key(key, tenant, group)
            resp = c.explain(_require(target, "TARGET"), slice_key=k)
        else:
            resp = c.explain(_require(target, "TARGET"), app_key=key)
    g = int(resp.generation)
    sd = slice_dict(resp.slice, g)
    gpart, spart = key_parts(int(resp.slice_key))
    if output == OutputFormat.json:
        print_json(
            {"target": target, "key": key, "slice_key": int(resp.slice_key), "slice_key_hex": f"{resp.slice_key:016x}",
             "group_part": gpart, "session_part": spart, "tenant": tenant or None, "how": how,
             "generation": g, "slice": sd, "pods": [pod_dict(p) for p in resp.pods],
             "overrides": [override_dict(o) for o in resp.overrides], "why": resp.why}
        )
        return
    out = console()
    out.print(f"[bold]key[/bold]        {key}  ({how})")
    out.print(f"[bold]SliceKey[/bold]   {resp.slice_key:016x}  ({resp.slice_key})")
    out.print(f"[bold]parts[/bold]      group {gpart:08x} | session {spart:08x}"
              + ("" if tenant or group else "  (as read in the grouped layout)"))  # fmt: skip
    out.print(f"[bold]slice[/bold]      {fmt_range(sd['lo'], sd['hi'])}  {fmt_share(sd['lo'], sd['hi'])} of the keyspace")
    out.print(f"[bold]generation[/bold] {g}  (replica set unchanged for {sd['age']} generations)")
    out.print(f"[bold]replicas[/bold]   {', '.join(sd['replicas']) or '-'}"
              + (f"  [yellow](leaving: {', '.join(sd['leaving'])})[/yellow]" if sd["leaving"] else ""))
    for p in resp.pods:
        d = pod_dict(p)
        out.print(f"  {d['id']:<16} {d['state']:<9} {d['address']:<22} {d['http_address']}")
    out.print(f"[bold]load[/bold]       {fmt_float(sd['load'])}")
    for o in resp.overrides:
        out.print(f"[bold]override[/bold]   {_override_text(o)}")
    out.print(f"[bold]why[/bold]        {resp.why or '-'}")


def _changes(prev: slicing_pb2.Assignment | None, cur: slicing_pb2.Assignment) -> list[dict[str, Any]]:
    """Slices whose range or replica set differ from the previous generation."""
    if prev is None:
        return []
    before = {(int(s.slice.lo), hi_of(s.slice)): (tuple(s.replicas), tuple(s.leaving)) for s in prev.slices}
    out = []
    for s in cur.slices:
        rng = (int(s.slice.lo), hi_of(s.slice))
        now = (tuple(s.replicas), tuple(s.leaving))
        if before.get(rng) != now:
            was = before.get(rng)
            out.append({"lo": rng[0], "hi": rng[1], "before": list(was[0]) if was else None, "after": list(now[0]),
                        "leaving": list(now[1]), "new_range": was is None})
    return out


@cli_errors
def watch(
    target: TargetArg,
    count: Annotated[int, typer.Option("--count", "-c", help="Exit after N updates (0: until Ctrl-C).")] = 0,
    from_generation: Annotated[int, typer.Option("--from-generation", help="Skip generations <= this.")] = 0,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Follow a target's assignment live: one line per new generation with what changed."""
    seen = 0
    prev: slicing_pb2.Assignment | None = None
    out = console()
    with _client(assigner) as c:
        for update in c.watch(_require(target, "TARGET"), from_generation):
            if update.WhichOneof("update") != "assignment":
                continue
            a = update.assignment
            changes = _changes(prev, a)
            if output == OutputFormat.json:
                print_json_line({"target": a.target, "generation": int(a.generation), "slices": len(a.slices),
                                 "pods": [p.id for p in a.pods], "stats": scalars(a.stats), "changes": changes})
            else:
                st = a.stats
                what = ", ".join(
                    f"{n} {label}" for n, label in ((st.moves, "moves"), (st.splits, "splits"), (st.merges, "merges"),
                                                    (st.replications, "repl"), (st.dereplications, "derepl"),
                                                    (st.fills, "fills")) if n
                ) or ("full assignment" if prev is None else "no policy changes")
                out.print(f"[bold]gen {a.generation}[/bold] {fmt_time_ms(int(a.created_unix_ms))}  "
                          f"{len(a.slices)} slices, {len(a.pods)} pods  [dim]{what}[/dim]")
                for ch in changes[:12]:
                    before = ",".join(ch["before"]) if ch["before"] is not None else "(new range)"
                    out.print(f"    {fmt_range(ch['lo'], ch['hi'])}  {before} → {','.join(ch['after'])}"
                              + (f"  (leaving {','.join(ch['leaving'])})" if ch["leaving"] else ""))
                if len(changes) > 12:
                    out.print(f"    … {len(changes) - 12} more")
            prev = a
            seen += 1
            if count and seen >= count:
                return


# ----------------------------------------------------------------------------- write commands
@cli_errors
def drain(
    pod: Annotated[str, typer.Argument(help="Pod id (see `brunoise pods`).")],
    undo: Annotated[bool, typer.Option("--undo", help="Undrain: make the pod active again.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until the pod holds no slice and runs no request (-o json: JSON lines).")
    ] = False,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Give up waiting after this long (exit 1).")] = 300.0,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Drain a pod: its slices move away (make-before-break) and it gets no new ones; --undo reverses it."""
    with _client(assigner) as c:
        resp = c.drain(_require(pod, "POD"), undrain=undo)
        d = pod_dict(resp.pod)
        if output == OutputFormat.json and wait:
            print(json.dumps({"pod": d}), flush=True)  # JSON lines: the progress lines follow
        elif output == OutputFormat.json:
            print_json({"pod": d})
        else:
            console().print(f"pod {d['id']} is now [bold]{d['state']}[/bold]")
        if wait and not undo:
            _wait_drained(c, resp.pod.id, resp.pod.target, timeout_s, output)


def _wait_drained(c: Any, pod_id: str, target: str, timeout_s: float, output: OutputFormat) -> None:
    """Poll until ``pod_id`` holds no slice of ``target`` and reports nothing running or waiting (or it is gone)."""
    deadline = time.monotonic() + timeout_s
    last: tuple[int, int, int] | None = None
    while True:
        now = held, running, waiting = c.drain_progress(pod_id, target)
        if now != last:
            if output == OutputFormat.json:
                print(json.dumps({"pod": pod_id, "slices_held": held, "running": running, "waiting": waiting}), flush=True)
            else:
                console().print(f"  {pod_id}: {held} slices held, {running} running, {waiting} waiting")
            last = now
        if now == (0, 0, 0):
            if output != OutputFormat.json:
                console().print(f"pod {pod_id} is drained")
            return
        if time.monotonic() > deadline:
            raise typer.Exit(1)
        time.sleep(0.5)


def _print_change(a: slicing_pb2.Assignment, output: OutputFormat, extra: dict[str, Any], key: int | None = None) -> None:
    if output == OutputFormat.json:
        d = assignment_dict(a)
        body = {k: d[k] for k in ("target", "generation", "slices", "overrides")}
        if key is not None:
            sa = _find_slice(a, key)
            body["slice"] = slice_dict(sa, int(a.generation)) if sa is not None else None
        print_json({**extra, **body})
        return
    _print_slices(a, highlight=key)


@cli_errors
def move(
    target: TargetArg,
    key: Annotated[str, typer.Argument(help="App key or (with --slice-key) a SliceKey: the slice holding it moves.")],
    pods_csv: Annotated[str, typer.Argument(metavar="POD[,POD..]", help="The pods that must hold that slice.")],
    slice_key: SliceKeyFlag = False,
    override_id: Annotated[str, typer.Option("--id", help="Override id (default: a fresh KIND-xxxxxx).")] = "",
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Pin the slice holding KEY to exactly these pods (a manual override until `clear`)."""
    pod_ids = [p.strip() for p in pods_csv.split(",") if p.strip()]
    if not pod_ids:
        raise CliError("give at least one pod id, e.g. pod-1 or pod-1,pod-2", 2)
    with _client(assigner) as c:
        k = _slice_key_of(c, _require(target, "TARGET"), key, slice_key)
        o = slicing_pb2.Override(id=_override_id(override_id, "move"), move=slicing_pb2.MoveOverride(key=k, pods=pod_ids))
        a = c.set_override(target, o).assignment
    _print_change(a, output, {"slice_key": k}, key=k)


@cli_errors
def split(
    target: TargetArg,
    at: Annotated[str, typer.Argument(help="SliceKey (decimal or 0x-hex) where a slice boundary must be.")],
    override_id: Annotated[str, typer.Option("--id", help="Override id (default: a fresh KIND-xxxxxx).")] = "",
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Keep a slice boundary at AT (splits the slice holding it)."""
    k = parse_key(at)
    if not 0 < k < KEYSPACE_END:
        raise CliError("AT must be inside (0, 2^64): the keyspace ends are always boundaries", 2)
    with _client(assigner) as c:
        a = c.set_override(_require(target, "TARGET"),
                           slicing_pb2.Override(id=_override_id(override_id, "split"), split=slicing_pb2.SplitOverride(at=k))).assignment
    _print_change(a, output, {"at": k}, key=k)


@cli_errors
def merge(
    target: TargetArg,
    lo: Annotated[str, typer.Argument(help="Start SliceKey (decimal or 0x-hex).")],
    hi: Annotated[str, typer.Argument(help="End SliceKey, exclusive (or `end` for 2^64).")],
    override_id: Annotated[str, typer.Option("--id", help="Override id (default: a fresh KIND-xxxxxx).")] = "",
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Keep [LO, HI) one slice (merges the slices inside it)."""
    lo_k, hi_k = parse_key(lo), parse_key(hi)
    if not lo_k < hi_k:
        raise CliError(f"LO must be below HI, got {lo} >= {hi}", 2)
    with _client(assigner) as c:
        o = slicing_pb2.Override(id=_override_id(override_id, "merge"), merge=slicing_pb2.MergeOverride(lo=lo_k, hi=0 if hi_k == KEYSPACE_END else hi_k))
        a = c.set_override(_require(target, "TARGET"), o).assignment
    _print_change(a, output, {"lo": lo_k, "hi": hi_k}, key=lo_k)


@cli_errors
def clear(
    target: TargetArg,
    ids: Annotated[list[str] | None, typer.Argument(help="Override ids to clear (none: all).")] = None,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
    yes: YesOpt = False,
) -> None:
    """Clear manual overrides (all of them, or the ids given); the policy takes over again. Asks first unless --yes."""
    what = f"overrides {', '.join(ids)}" if ids else "ALL manual overrides"
    confirm(f"Clear {what} on target {target}?", yes)
    with _client(assigner) as c:
        a = c.clear_overrides(_require(target, "TARGET"), list(ids or [])).assignment
    if output == OutputFormat.json:
        _print_change(a, output, {"cleared": list(ids or [])})
        return
    console().print(f"cleared {'overrides ' + ', '.join(ids) if ids else 'all overrides'} on {target}; "
                    f"generation {a.generation}, {len(a.overrides)} left")


@cli_errors
def keymap(
    target: TargetArg,
    out: Annotated[pathlib.Path | None, typer.Option("--out", help="Write a picture: file.png or file.svg.")] = None,
    generations: Annotated[int, typer.Option("--generations", "-n", help="How many recent generations.")] = 16,
    width: Annotated[int, typer.Option("--width", "-w", help="Terminal columns for the keyspace (0: fit).")] = 0,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """The keyspace at a glance: slices along x, one row per generation, coloured by owner pod, shaded by load."""
    if out is not None and out.suffix.lower() not in (".png", ".svg"):
        raise CliError(f"--out must end in .png or .svg, got '{out.name}'", 2)
    with _client(assigner) as c:
        resp = c.history(_require(target, "TARGET"), limit=max(1, generations), full=True)
        assignments = [e.assignment for e in resp.entries if e.HasField("assignment")]
        if not assignments:  # an assigner that keeps no full history: fall back to the current one
            assignments = [c.get_assignment(target)]
    km = keymap_mod.build_keymap(target, assignments)
    if out is not None:
        keymap_mod.write_image(km, out)
    if output == OutputFormat.json:
        print_json({**km.to_dict(), "out": str(out) if out is not None else None})
        return
    cols = width or max(16, min(120, shutil.get_terminal_size((100, 24)).columns - 24))
    con = console()
    con.print(f"[bold]keymap[/bold] {target}: {len(km.rows)} generations")
    con.print(keymap_mod.render_terminal(km, cols), end="")
    if out is not None:
        con.print(f"wrote {out}")


COMMANDS: tuple[Callable[..., None], ...] = (
    targets, slices, pods, history, explain, watch, drain, move, split, merge, clear, keymap,
)


def register(app: typer.Typer) -> None:
    """Add every admin command to ``app``."""
    for fn in COMMANDS:
        app.command(name=fn.__name__)(fn)


__all__ = ["COMMANDS", "print_error", "register"]
