"""`brunoise rollout start/status/pause/resume/promote/rollback`: a model's move from its blue target to green."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from brunoise.cli.admin import AssignerOpt, OutputOpt, _client, _require, cli_errors
from brunoise.cli.output import OutputFormat, console, fmt_float, make_table, print_json
from brunoise_api.v1 import assigner_pb2

rollout_app = typer.Typer(
    help="Model-version rollouts: keys move from the blue target to green by keyspace range, in steps; the leader "
    "steps them and rolls back when green breaches its SLO.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, typer.Argument(help="The model name clients ask for (e.g. the targets' model).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Recorded with the change.")]
Action = assigner_pb2.ChangeRolloutRequest


def rollout_dict(r: assigner_pb2.Rollout) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model": r.model, "blue": r.blue, "green": r.green, "steps": list(r.steps), "step": r.step,
        "state": r.state, "fraction": r.fraction, "generation": r.generation, "step_interval_s": r.step_interval_s,
        "changed_unix_ms": r.changed_unix_ms, "reason": r.reason,
        "slo": {"max_error_rate": r.slo.max_error_rate, "max_ttft_p99_ms": r.slo.max_ttft_p99_ms,
                "min_requests": r.slo.min_requests, "window_s": r.slo.window_s},
    }  # fmt: skip
    if r.judged:
        d["green_window"] = {"requests": r.green_requests, "errors": r.green_errors,
                             "ttft_p99_ms": r.green_ttft_p99_ms}  # fmt: skip
    return d


def _print(rollouts: list[assigner_pb2.Rollout], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        print_json({"rollouts": [rollout_dict(r) for r in rollouts]})
        return
    rows = [
        (r.model, r.blue, r.green, r.state, f"{r.step}/{len(r.steps)}", fmt_float(r.fraction), r.generation,
         f"{r.green_errors}/{r.green_requests}" if r.judged else "-", r.reason)
        for r in rollouts
    ]  # fmt: skip
    cols = ["model", "blue", "green", "state", "step", "green share", "gen", "green errors/req", "last change"]
    console().print(make_table(None, cols, rows, right=["step", "green share", "gen"]))
    if not rollouts:
        console().print("no rollouts")


@rollout_app.command("start")
@cli_errors
def start(
    model: ModelArg,
    blue: Annotated[str, typer.Option("--blue", help="The target serving the model now.")] = "",
    green: Annotated[str, typer.Option("--green", help="The target of the new version (configured, pods up).")] = "",
    steps: Annotated[
        str, typer.Option("--steps", help="Fractions of the keyspace, comma-separated; 1.0 alone is blue-green.")
    ] = "0.01,0.1,0.5,1.0",
    interval_s: Annotated[float, typer.Option("--interval-s", help="Seconds between steps.")] = 10.0,
    max_error_rate: Annotated[
        float, typer.Option("--max-error-rate", help="Green's 5xx share that rolls back.")
    ] = 0.05,
    max_ttft_p99_ms: Annotated[float, typer.Option("--max-ttft-p99-ms", help="0: TTFT not judged.")] = 0.0,
    min_requests: Annotated[int, typer.Option("--min-requests", help="Green requests before it is judged.")] = 20,
    window_s: Annotated[float, typer.Option("--window-s", help="The SLO window, seconds.")] = 30.0,
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Start moving MODEL from --blue to --green (every key blue until green is ready)."""
    try:
        fractions = [float(x) for x in steps.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--steps must be comma-separated numbers, got {steps!r}") from None
    req = assigner_pb2.StartRolloutRequest(
        model=_require(model, "MODEL"), blue=_require(blue, "--blue"), green=_require(green, "--green"),
        steps=fractions, step_interval_s=interval_s,
        slo=assigner_pb2.RolloutSLO(max_error_rate=max_error_rate, max_ttft_p99_ms=max_ttft_p99_ms,
                                    min_requests=min_requests, window_s=window_s),
    )  # fmt: skip
    with _client(assigner) as c:
        _print([c.start_rollout(req)], output)


@rollout_app.command("status")
@cli_errors
def status(
    model: Annotated[str, typer.Argument(help="One model (default: every rollout).")] = "",
    assigner: AssignerOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Each rollout: state, step, green's share of the keyspace, generation, green's SLO window (from the leader)."""
    with _client(assigner) as c:
        _print(list(c.list_rollouts(model).rollouts), output)


def _change(model: str, action: int, reason: str, assigner: list[str] | None, output: OutputFormat) -> None:
    with _client(assigner) as c:
        _print([c.change_rollout(_require(model, "MODEL"), action, reason)], output)


@rollout_app.command("pause")
@cli_errors
def pause(
    model: ModelArg, reason: ReasonOpt = "", assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table
) -> None:
    """Hold green's share where it is (the SLO is still judged)."""
    _change(model, Action.PAUSE, reason, assigner, output)


@rollout_app.command("resume")
@cli_errors
def resume(
    model: ModelArg, reason: ReasonOpt = "", assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table
) -> None:
    """Go on stepping a paused rollout."""
    _change(model, Action.RESUME, reason, assigner, output)


@rollout_app.command("promote")
@cli_errors
def promote(
    model: ModelArg, reason: ReasonOpt = "", assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table
) -> None:
    """Every key green, now and for good."""
    _change(model, Action.PROMOTE, reason, assigner, output)


@rollout_app.command("rollback")
@cli_errors
def rollback(
    model: ModelArg, reason: ReasonOpt = "", assigner: AssignerOpt = None, output: OutputOpt = OutputFormat.table
) -> None:
    """Every key blue, in one change (one generation)."""
    _change(model, Action.ROLLBACK, reason, assigner, output)
