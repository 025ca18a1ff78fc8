"""Target policy as configuration: `brunoise target get/set` and `brunoise apply -f targets.yaml [--dry-run]`."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Annotated, Any

import typer
import yaml

from brunoise.cli.admin import AssignerOpt, OutputOpt, cli_errors
from brunoise.cli.client import AdminClient, resolve_assigner
from brunoise.cli.output import CliError, OutputFormat, console, print_json
from sharder import codec
from sharder.config import TargetConfig
from sharder.errors import ConfigError

#: Every knob of a target, as the model declares it (name -> field).
FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(TargetConfig)}
KNOBS = tuple(n for n in FIELDS if n != "target")

target_app = typer.Typer(help="Read or change one target's policy knobs (churn budget, replicas, thresholds, ...).",
                         no_args_is_help=True)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Change:
    """What applying one target's desired config does: create it, or change these fields (old, new)."""

    target: str
    create: bool
    fields: dict[str, tuple[Any, Any]]
    config: TargetConfig


def as_dict(c: TargetConfig) -> dict[str, Any]:
    d = dataclasses.asdict(c)
    d["eligibility"] = dict(c.eligibility)
    return d


def coerce(name: str, value: Any) -> Any:
    """``value`` (from YAML or ``key=value``) as the type the TargetConfig field ``name`` has."""
    if name not in FIELDS or name == "target":
        raise CliError(f"unknown target knob {name!r}; known: {', '.join(KNOBS)}", 2)
    kind = str(FIELDS[name].type)
    try:
        if name == "eligibility":
            if isinstance(value, Mapping):
                return {str(k): str(v) for k, v in value.items()}
            pairs = [p for p in str(value).split(",") if p.strip()]
            return dict(p.strip().split("=", 1) for p in pairs)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise CliError(f"{name}: {value!r} is not a valid {kind}", 2) from None


def desired(current: TargetConfig | None, target: str, values: Mapping[str, Any]) -> TargetConfig:
    """The config ``values`` ask for: the given knobs set, the others kept (a new target starts from defaults)."""
    base = as_dict(current) if current is not None else as_dict(TargetConfig(target=target))
    for k, v in values.items():
        base[k] = coerce(k, v)
    try:
        return TargetConfig(**base).validate()
    except ConfigError as exc:
        raise CliError(f"target {target!r}: {exc}", 2) from None


def diff(current: TargetConfig | None, want: TargetConfig) -> Change:
    old = as_dict(current) if current is not None else as_dict(TargetConfig(target=want.target))
    new = as_dict(want)
    fields = {k: (old[k], new[k]) for k in KNOBS if old[k] != new[k]}
    return Change(want.target, current is None, fields, want)


def read_targets_file(path: pathlib.Path) -> list[dict[str, Any]]:
    """``targets:`` (or a top-level list) of mappings, each with a ``target`` name and any knobs."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", 2) from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}", 2) from None
    items = doc.get("targets") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("target") for i in items):
        raise CliError(f"{path}: expected `targets:` as a list of mappings, each with a `target` name", 2)
    names = [str(i["target"]) for i in items]
    if len(set(names)) != len(names):
        raise CliError(f"{path}: a target is listed twice: {names}", 2)
    return items


def current_configs(c: AdminClient) -> dict[str, TargetConfig]:
    return {t.target: codec.config_from_proto(t.config) for t in c.list_targets().targets}


def render_changes(changes: list[Change]) -> str:
    lines: list[str] = []
    for ch in changes:
        if ch.create:
            lines.append(f"+ target {ch.target} (create)")
        elif ch.fields:
            lines.append(f"~ target {ch.target}")
        else:
            lines.append(f"  target {ch.target} (unchanged)")
        for k, (old, new) in ch.fields.items():
            lines.append(f"    {k}: {old!r} -> {new!r}")
    return "\n".join(lines)


def apply_changes(c: AdminClient, changes: list[Change]) -> dict[str, int]:
    """ConfigureTarget for every change that changes something; the generation each one committed."""
    out: dict[str, int] = {}
    for ch in changes:
        if ch.create or ch.fields:
            resp = c.configure_target(codec.config_to_proto(ch.config))
            out[ch.target] = int(resp.assignment.generation)
    return out


def _report(changes: list[Change], applied: dict[str, int], dry_run: bool, output: OutputFormat) -> None:
    if output == OutputFormat.json:
        print_json({
            "dry_run": dry_run,
            "changes": [{"target": ch.target, "create": ch.create,
                         "fields": {k: {"old": o, "new": n} for k, (o, n) in ch.fields.items()}} for ch in changes],
            "applied": applied,
        })  # fmt: skip
        return
    con = console()
    con.print(render_changes(changes), markup=False, highlight=False)
    if dry_run:
        con.print("dry run: nothing applied")
    for t, g in applied.items():
        con.print(f"target {t}: generation {g}", markup=False)


@cli_errors
def apply(
    file: Annotated[pathlib.Path, typer.Option("--file", "-f", help="YAML: `targets:` list of {target, knobs...}.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff against the assigner; change nothing.")] = False,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Make targets' policy match a file: knobs it names are set, others kept; missing targets are created."""
    wanted = {str(i["target"]): {k: coerce(k, v) for k, v in i.items() if k != "target"} for i in read_targets_file(file)}
    with AdminClient(resolve_assigner(assigner)) as c:  # knob names and types were checked before connecting
        now = current_configs(c)
        changes = [diff(now.get(name), desired(now.get(name), name, values)) for name, values in wanted.items()]
        applied = {} if dry_run else apply_changes(c, changes)
    _report(changes, applied, dry_run, output)


@target_app.command("get")
@cli_errors
def get(
    target: Annotated[str, typer.Argument(help="Target name (see `brunoise targets`).")],
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Print a target's knobs as YAML (ready for `brunoise apply -f`), or JSON with -o json."""
    with AdminClient(resolve_assigner(assigner)) as c:
        cfg = current_configs(c).get(target)
    if cfg is None:
        raise CliError(f"no target {target!r} (see `brunoise targets`)", 1)
    d = as_dict(cfg)
    if output == OutputFormat.json:
        print_json(d)
        return
    typer.echo(yaml.safe_dump({"targets": [d]}, sort_keys=False).rstrip())


@target_app.command("set")
@cli_errors
def set_(
    target: Annotated[str, typer.Argument(help="Target name.")],
    knobs: Annotated[list[str], typer.Argument(help="KNOB=VALUE ... (e.g. churn_budget=0.05 eligibility=region=eu)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff; change nothing.")] = False,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Change some of an existing target's knobs (the others keep their values)."""
    values: dict[str, Any] = {}
    for kv in knobs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise CliError(f"expected KNOB=VALUE, got {kv!r}", 2)
        values[k.strip()] = coerce(k.strip(), v)
    with AdminClient(resolve_assigner(assigner)) as c:
        cur = current_configs(c).get(target)
        if cur is None:
            raise CliError(f"no target {target!r}: create it with `brunoise apply -f`", 1)
        changes = [diff(cur, desired(cur, target, values))]
        applied = {} if dry_run else apply_changes(c, changes)
    _report(changes, applied, dry_run, output)


def register(app: typer.Typer) -> None:
    """Add ``target get/set`` and ``apply`` to the CLI."""
    app.add_typer(target_app, name="target")
    app.command(name="apply")(apply)


__all__ = ["register"]
