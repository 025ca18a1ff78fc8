"""The assigner's admin RPCs as a small blocking client, with errors turned into one-line CliErrors."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # keep gRPC's C-core logging off the one-line errors
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import grpc

from brunoise.cli.output import KEYSPACE_END, CliError
from brunoise_api.v1 import assigner_pb2, assigner_pb2_grpc, slicing_pb2
from sharder.headers import LEADER_METADATA_KEY
from sharder.security.client import ENV_TLS_CA, ENV_TOKEN, ClientAuth

T = TypeVar("T")

DEFAULT_ASSIGNER = "127.0.0.1:50051"
ENV_ASSIGNER = "BRUNOISE_ASSIGNER"
ENV_STATE_DIR = "BRUNOISE_STATE_DIR"

#: Exit codes by gRPC status (2 is also what typer uses for usage errors).
EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.OUT_OF_RANGE: 2,
    grpc.StatusCode.UNAVAILABLE: 3,
    grpc.StatusCode.DEADLINE_EXCEEDED: 3,
    grpc.StatusCode.NOT_FOUND: 4,
    grpc.StatusCode.FAILED_PRECONDITION: 5,
    grpc.StatusCode.ALREADY_EXISTS: 5,
    grpc.StatusCode.ABORTED: 5,
    grpc.StatusCode.UNAUTHENTICATED: 6,
    grpc.StatusCode.PERMISSION_DENIED: 6,
}


# ----------------------------------------------------------------------------- where the assigner is
def state_dir() -> pathlib.Path:
    """Where ``cluster up`` records the running cluster: $BRUNOISE_STATE_DIR, else ~/.brunoise."""
    env = os.environ.get(ENV_STATE_DIR)
    return pathlib.Path(env) if env else pathlib.Path.home() / ".brunoise"


def cluster_file() -> pathlib.Path:
    """The well-known file a running ``brunoise cluster up`` writes its addresses to."""
    return state_dir() / "cluster.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_cluster_file() -> dict[str, Any] | None:
    """The running cluster's record, or None when there is none (or its ``cluster up`` process is gone)."""
    try:
        data = json.loads(cluster_file().read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if isinstance(pid, int) and not _pid_alive(pid):
        return None
    return data


def split_endpoints(values: Sequence[str] | str | None) -> list[str]:
    """Assigner addresses from repeated ``-a`` values and/or comma-separated lists, in order, without repeats."""
    items = [values] if isinstance(values, str) else list(values or ())
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def resolve_assigner(option: Sequence[str] | str | None) -> list[str]:
    """The assigner replicas to try, in order: every --assigner/-a (repeatable or comma-separated), else
    $BRUNOISE_ASSIGNER (comma-separated), else the running ``cluster up``'s assigner, else 127.0.0.1:50051."""
    given = split_endpoints(option)
    if given:
        return given
    env = split_endpoints(os.environ.get(ENV_ASSIGNER))
    if env:
        return env
    rec = read_cluster_file()
    if rec and isinstance(rec.get("assigner"), str):
        return [str(rec["assigner"])]
    return [DEFAULT_ASSIGNER]


def resolve_auth(token: str | None = None, ca: str | None = None) -> ClientAuth:
    """Token and CA: the arguments, else $BRUNOISE_TOKEN / $BRUNOISE_TLS_CA, else the running ``cluster up``'s
    admin token and CA (from the cluster file), else none (an open loopback assigner)."""
    env = ClientAuth.from_env()
    rec = read_cluster_file() or {}
    tok = token or env.token or (str(rec["admin_token"]) if isinstance(rec.get("admin_token"), str) else None)
    ca_path = ca or os.environ.get(ENV_TLS_CA) or (str(rec["tls_ca"]) if isinstance(rec.get("tls_ca"), str) else None)
    return ClientAuth.from_values(tok, None, ca_path)


# ----------------------------------------------------------------------------- errors
def rpc_error(exc: grpc.RpcError, address: str, timeout_s: float) -> CliError:
    """One clear line for a failed RPC."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    details = " ".join(details.split())
    exit_code = EXIT_CODES.get(code, 1)
    if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "dns" in details.lower() or not details):
        return CliError(
            f"cannot reach the assigner at {address} ({details or 'unavailable'}); "
            f"start one with `brunoise cluster up` or point --assigner / ${ENV_ASSIGNER} at it",
            exit_code,
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return CliError(
            f"the assigner at {address} refused the call ({details}); give an admin token with --token or "
            f"${ENV_TOKEN} (and --tls-ca / ${ENV_TLS_CA}), or run the CLI beside `brunoise cluster up`",
            exit_code,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"the assigner at {address} did not answer within {timeout_s:g}s", exit_code)
    name = code.name.lower().replace("_", " ")
    return CliError(f"{name}: {details}" if details else f"{name} (from the assigner at {address})", exit_code)



def _leader_hint(exc: grpc.RpcError) -> str:
    """The leader address a follower put in the trailing metadata of a FAILED_PRECONDITION, or ""."""
    call: Any = exc
    try:
        if call.code() != grpc.StatusCode.FAILED_PRECONDITION:
            return ""
        for item in call.trailing_metadata() or ():
            key, value = item[0], item[1]
            if key == LEADER_METADATA_KEY and isinstance(value, str):
                return value
    except Exception:
        return ""
    return ""


# ----------------------------------------------------------------------------- client
class AdminClient:
    """Blocking calls to the assigner's admin RPCs; every failure raises CliError. Given several replicas, a call
    that cannot reach one (UNAVAILABLE) tries the next in order, and a write a follower refuses goes to the leader
    it names."""

    def __init__(self, address: str | Sequence[str], timeout_s: float = 10.0, auth: ClientAuth | None = None) -> None:
        self.endpoints = split_endpoints(address) or [DEFAULT_ASSIGNER]
        self.address = self.endpoints[0]
        self.timeout_s = timeout_s
        self.auth = auth if auth is not None else resolve_auth()
        self._channel = self.auth.channel(self.address, [("grpc.enable_retries", 0)])
        self._stub = assigner_pb2_grpc.AssignerStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, request: Any, resp_type: type[T]) -> T:
        """Call RPC ``name``: an unreachable replica hands over to the next one given (the call never reached it);
        a write sent to a follower is retried once on the leader it names."""
        untried = [a for a in self.endpoints if a != self.address]
        followed = False
        while True:
            try:
                return cast(
                    T, getattr(self._stub, name)(request, timeout=self.timeout_s, metadata=self.auth.metadata)
                )
            except grpc.RpcError as exc:
                leader = _leader_hint(exc)
                if not followed and leader and leader != self.address:
                    followed = True
                    self._connect(leader)
                    continue
                if untried and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._connect(untried.pop(0))
                    continue
                raise rpc_error(exc, self.address, self.timeout_s) from None

    def _connect(self, address: str) -> None:
        self._channel.close()
        self.address = address
        self._channel = self.auth.channel(address, [("grpc.enable_retries", 0)])
        self._stub = assigner_pb2_grpc.AssignerStub(self._channel)  # type: ignore[no-untyped-call]

    def list_targets(self) -> assigner_pb2.ListTargetsResponse:
        return self._call("ListTargets", assigner_pb2.ListTargetsRequest(), assigner_pb2.ListTargetsResponse)

    def configure_target(self, config: slicing_pb2.TargetConfig) -> assigner_pb2.ConfigureTargetResponse:
        return self._call("ConfigureTarget", assigner_pb2.ConfigureTargetRequest(config=config), assigner_pb2.ConfigureTargetResponse)

    def get_assignment(self, target: str, generation: int = 0) -> slicing_pb2.Assignment:
        return self._call("GetAssignment", assigner_pb2.GetAssignmentRequest(target=target, generation=generation), slicing_pb2.Assignment)

    def explain(self, target: str, *, app_key: str | None = None, slice_key: int | None = None) -> assigner_pb2.ExplainKeyResponse:
        if slice_key is not None:
            req = assigner_pb2.ExplainKeyRequest(target=target, slice_key=slice_key)
        else:
            req = assigner_pb2.ExplainKeyRequest(target=target, app_key=app_key or "")
        return self._call("ExplainKey", req, assigner_pb2.ExplainKeyResponse)

    def history(self, target: str, limit: int = 0, full: bool = False) -> assigner_pb2.HistoryResponse:
        return self._call("History", assigner_pb2.HistoryRequest(target=target, limit=limit, full=full), assigner_pb2.HistoryResponse)

    def list_pods(self, target: str = "") -> assigner_pb2.ListPodsResponse:
        return self._call("ListPods", assigner_pb2.ListPodsRequest(target=target), assigner_pb2.ListPodsResponse)

    def drain(self, pod_id: str, undrain: bool = False) -> assigner_pb2.DrainResponse:
        return self._call("Drain", assigner_pb2.DrainRequest(pod_id=pod_id, undrain=undrain), assigner_pb2.DrainResponse)

    def drain_progress(self, pod_id: str, target: str) -> tuple[int, int, int]:
        """What a drain of ``pod_id`` still waits for: the slices of ``target`` it holds (replica or leaving) and the
        requests it last reported running and waiting; ``(0, 0, 0)`` once drained (or gone). ``drain --wait``
        polls this, and so does the bench before it stops a pod."""
        held = sum(1 for s in self.get_assignment(target).slices if pod_id in s.replicas or pod_id in s.leaving)
        st = next((p for p in self.list_pods(target).pods if p.pod.id == pod_id), None)
        running = int(st.engine.running) if st is not None else 0
        waiting = int(st.engine.waiting) if st is not None else 0
        return held, running, waiting

    def set_override(self, target: str, override: slicing_pb2.Override) -> assigner_pb2.SetOverrideResponse:
        return self._call("SetOverride", assigner_pb2.SetOverrideRequest(target=target, override=override), assigner_pb2.SetOverrideResponse)

    def clear_overrides(self, target: str, ids: list[str]) -> assigner_pb2.ClearOverridesResponse:
        return self._call("ClearOverrides", assigner_pb2.ClearOverridesRequest(target=target, ids=ids), assigner_pb2.ClearOverridesResponse)

    def set_quota(self, limits: assigner_pb2.QuotaLimits, remove: bool = False) -> assigner_pb2.QuotaStatus:
        return self._call("SetQuota", assigner_pb2.SetQuotaRequest(limits=limits, remove=remove), assigner_pb2.QuotaStatus)

    def get_quota(self, tenant: str) -> assigner_pb2.QuotaStatus:
        return self._call("GetQuota", assigner_pb2.GetQuotaRequest(tenant=tenant), assigner_pb2.QuotaStatus)

    def list_quotas(self) -> assigner_pb2.ListQuotasResponse:
        return self._call("ListQuotas", assigner_pb2.ListQuotasRequest(), assigner_pb2.ListQuotasResponse)

    def set_placement(self, placement: assigner_pb2.TenantPlacement, remove: bool = False) -> assigner_pb2.TenantPlacement:
        req = assigner_pb2.SetPlacementRequest(placement=placement, remove=remove)
        return self._call("SetPlacement", req, assigner_pb2.TenantPlacement)

    def list_placements(self) -> assigner_pb2.ListPlacementsResponse:
        return self._call("ListPlacements", assigner_pb2.ListPlacementsRequest(), assigner_pb2.ListPlacementsResponse)

    def list_quarantines(self, target: str = "", suspected: bool = False) -> assigner_pb2.ListQuarantinesResponse:
        req = assigner_pb2.ListQuarantinesRequest(target=target, suspected=suspected)
        return self._call("ListQuarantines", req, assigner_pb2.ListQuarantinesResponse)

    def clear_quarantine(self, target: str, slice_key: int, all_keys: bool) -> assigner_pb2.ClearQuarantineResponse:
        req = assigner_pb2.ClearQuarantineRequest(target=target, slice_key=slice_key, all=all_keys)
        return self._call("ClearQuarantine", req, assigner_pb2.ClearQuarantineResponse)

    def start_rollout(self, req: assigner_pb2.StartRolloutRequest) -> assigner_pb2.Rollout:
        return self._call("StartRollout", req, assigner_pb2.Rollout)

    def change_rollout(self, model: str, action: int, reason: str = "") -> assigner_pb2.Rollout:
        req = assigner_pb2.ChangeRolloutRequest(model=model, action=action, reason=reason)  # type: ignore[arg-type]
        return self._call("ChangeRollout", req, assigner_pb2.Rollout)

    def list_rollouts(self, model: str = "") -> assigner_pb2.ListRolloutsResponse:
        return self._call("ListRollouts", assigner_pb2.ListRolloutsRequest(model=model), assigner_pb2.ListRolloutsResponse)

    def watch(self, target: str, from_generation: int = 0) -> Iterator[assigner_pb2.WatchResponse]:
        """Full assignments as they change (no deadline: ends when the caller stops iterating); a replica that
        cannot be reached before the first update hands over to the next one given."""
        untried = [a for a in self.endpoints if a != self.address]
        while True:
            stream = self._stub.Watch(
                assigner_pb2.WatchRequest(target=target, from_generation=from_generation, diffs=False),
                metadata=self.auth.metadata,
            )
            started = False
            try:
                for update in stream:
                    started = True
                    yield update
                return
            except grpc.RpcError as exc:
                if not started and untried and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._connect(untried.pop(0))
                    continue
                raise rpc_error(exc, self.address, self.timeout_s) from None
            finally:
                with contextlib.suppress(Exception):
                    stream.cancel()


# ----------------------------------------------------------------------------- protobuf -> JSON-friendly dicts
def state_name(state: int) -> str:
    """``POD_STATE_DRAINING`` -> ``draining``."""
    try:
        return slicing_pb2.PodState.Name(state).removeprefix("POD_STATE_").lower()
    except ValueError:
        return f"unknown({state})"


def hi_of(s: slicing_pb2.Slice) -> int:
    """A slice's hi as an int (0 on the wire means 2^64)."""
    return KEYSPACE_END if s.hi == 0 else int(s.hi)


def scalars(msg: Any) -> dict[str, Any]:
    """Every scalar field of a flat message (RoundStats, EngineLoad) as a dict, defaults included."""
    return {f.name: getattr(msg, f.name) for f in msg.DESCRIPTOR.fields}


def slice_dict(sa: slicing_pb2.SliceAssignment, generation: int = 0) -> dict[str, Any]:
    lo, hi = int(sa.slice.lo), hi_of(sa.slice)
    return {
        "lo": lo,
        "hi": hi,
        "lo_hex": f"{lo:016x}",
        "hi_hex": "2^64" if hi == KEYSPACE_END else f"{hi:016x}",
        "replicas": list(sa.replicas),
        "leaving": list(sa.leaving),
        "warming": list(sa.warming),
        "load": sa.load,
        "since_generation": int(sa.since_generation),
        "age": max(0, generation - int(sa.since_generation)) if generation else 0,
    }


def pod_dict(p: slicing_pb2.Pod) -> dict[str, Any]:
    return {
        "id": p.id,
        "target": p.target,
        "state": state_name(p.state),
        "address": p.address,
        "http_address": p.http_address,
        "labels": dict(p.labels),
    }


def override_dict(o: slicing_pb2.Override) -> dict[str, Any]:
    kind = o.WhichOneof("kind")
    out: dict[str, Any] = {"id": o.id, "kind": kind}
    if kind == "move":
        out.update(key=int(o.move.key), pods=list(o.move.pods))
    elif kind == "split":
        out.update(at=int(o.split.at))
    elif kind == "merge":
        out.update(lo=int(o.merge.lo), hi=KEYSPACE_END if o.merge.hi == 0 else int(o.merge.hi))
    return out


def config_dict(c: slicing_pb2.TargetConfig) -> dict[str, Any]:
    out = scalars(c)
    out["eligibility"] = dict(c.eligibility)
    return out


def assignment_dict(a: slicing_pb2.Assignment) -> dict[str, Any]:
    g = int(a.generation)
    return {
        "target": a.target,
        "generation": g,
        "created_unix_ms": int(a.created_unix_ms),
        "slices": [slice_dict(s, g) for s in a.slices],
        "pods": [pod_dict(p) for p in a.pods],
        "overrides": [override_dict(o) for o in a.overrides],
        "stats": scalars(a.stats),
        "config": config_dict(a.config),
    }


def pod_status_dict(ps: assigner_pb2.PodStatus) -> dict[str, Any]:
    out = pod_dict(ps.pod)
    out.update(
        engine=scalars(ps.engine),
        slices_held=int(ps.slices_held),
        slice_load=ps.slice_load,
        last_report_unix_ms=int(ps.last_report_unix_ms),
        prefix_hit_rate=ps.engine.prefix_hit_rate,
        load=ps.engine.load,
    )
    return out
