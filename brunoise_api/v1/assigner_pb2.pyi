from brunoise_api.v1 import slicing_pb2 as _slicing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("target", "from_generation", "diffs")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FROM_GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIFFS_FIELD_NUMBER: _ClassVar[int]
    target: str
    from_generation: int
    diffs: bool
    def __init__(self, target: _Optional[str] = ..., from_generation: _Optional[int] = ..., diffs: _Optional[bool] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("assignment", "diff")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    assignment: _slicing_pb2.Assignment
    diff: _slicing_pb2.AssignmentDiff
    def __init__(self, assignment: _Optional[_Union[_slicing_pb2.Assignment, _Mapping]] = ..., diff: _Optional[_Union[_slicing_pb2.AssignmentDiff, _Mapping]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("pod", "load", "lease_ttl_ms", "leaving")
    POD_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    pod: _slicing_pb2.Pod
    load: _slicing_pb2.LoadReport
    lease_ttl_ms: int
    leaving: bool
    def __init__(self, pod: _Optional[_Union[_slicing_pb2.Pod, _Mapping]] = ..., load: _Optional[_Union[_slicing_pb2.LoadReport, _Mapping]] = ..., lease_ttl_ms: _Optional[int] = ..., leaving: _Optional[bool] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("generation", "slices", "report_interval_ms", "leader_id", "state", "warming", "stranded", "peers")
    class PeersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WARMING_FIELD_NUMBER: _ClassVar[int]
    STRANDED_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    slices: _containers.RepeatedCompositeFieldContainer[_slicing_pb2.Slice]
    report_interval_ms: int
    leader_id: str
    state: _slicing_pb2.PodState
    warming: _containers.RepeatedCompositeFieldContainer[WarmTask]
    stranded: bool
    peers: _containers.ScalarMap[str, str]
    def __init__(self, generation: _Optional[int] = ..., slices: _Optional[_Iterable[_Union[_slicing_pb2.Slice, _Mapping]]] = ..., report_interval_ms: _Optional[int] = ..., leader_id: _Optional[str] = ..., state: _Optional[_Union[_slicing_pb2.PodState, str]] = ..., warming: _Optional[_Iterable[_Union[WarmTask, _Mapping]]] = ..., stranded: _Optional[bool] = ..., peers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WarmTask(_message.Message):
    __slots__ = ("slice", "donors")
    SLICE_FIELD_NUMBER: _ClassVar[int]
    DONORS_FIELD_NUMBER: _ClassVar[int]
    slice: _slicing_pb2.Slice
    donors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, slice: _Optional[_Union[_slicing_pb2.Slice, _Mapping]] = ..., donors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTargetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TargetSummary(_message.Message):
    __slots__ = ("target", "generation", "slices", "pods", "config")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    target: str
    generation: int
    slices: int
    pods: int
    config: _slicing_pb2.TargetConfig
    def __init__(self, target: _Optional[str] = ..., generation: _Optional[int] = ..., slices: _Optional[int] = ..., pods: _Optional[int] = ..., config: _Optional[_Union[_slicing_pb2.TargetConfig, _Mapping]] = ...) -> None: ...

class ListTargetsResponse(_message.Message):
    __slots__ = ("targets", "leader_id")
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[TargetSummary]
    leader_id: str
    def __init__(self, targets: _Optional[_Iterable[_Union[TargetSummary, _Mapping]]] = ..., leader_id: _Optional[str] = ...) -> None: ...

class ConfigureTargetRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: _slicing_pb2.TargetConfig
    def __init__(self, config: _Optional[_Union[_slicing_pb2.TargetConfig, _Mapping]] = ...) -> None: ...

class ConfigureTargetResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: _slicing_pb2.Assignment
    def __init__(self, assignment: _Optional[_Union[_slicing_pb2.Assignment, _Mapping]] = ...) -> None: ...

class GetAssignmentRequest(_message.Message):
    __slots__ = ("target", "generation")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    target: str
    generation: int
    def __init__(self, target: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class ExplainKeyRequest(_message.Message):
    __slots__ = ("target", "app_key", "slice_key")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    APP_KEY_FIELD_NUMBER: _ClassVar[int]
    SLICE_KEY_FIELD_NUMBER: _ClassVar[int]
    target: str
    app_key: str
    slice_key: int
    def __init__(self, target: _Optional[str] = ..., app_key: _Optional[str] = ..., slice_key: _Optional[int] = ...) -> None: ...

class ExplainKeyResponse(_message.Message):
    __slots__ = ("slice_key", "slice", "generation", "pods", "overrides", "why")
    SLICE_KEY_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    slice_key: int
    slice: _slicing_pb2.SliceAssignment
    generation: int
    pods: _containers.RepeatedCompositeFieldContainer[_slicing_pb2.Pod]
    overrides: _containers.RepeatedCompositeFieldContainer[_slicing_pb2.Override]
    why: str
    def __init__(self, slice_key: _Optional[int] = ..., slice: _Optional[_Union[_slicing_pb2.SliceAssignment, _Mapping]] = ..., generation: _Optional[int] = ..., pods: _Optional[_Iterable[_Union[_slicing_pb2.Pod, _Mapping]]] = ..., overrides: _Optional[_Iterable[_Union[_slicing_pb2.Override, _Mapping]]] = ..., why: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("target", "limit", "full")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    target: str
    limit: int
    full: bool
    def __init__(self, target: _Optional[str] = ..., limit: _Optional[int] = ..., full: _Optional[bool] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("generation", "created_unix_ms", "stats", "slices", "assignment", "audit")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    created_unix_ms: int
    stats: _slicing_pb2.RoundStats
    slices: int
    assignment: _slicing_pb2.Assignment
    audit: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, generation: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., stats: _Optional[_Union[_slicing_pb2.RoundStats, _Mapping]] = ..., slices: _Optional[int] = ..., assignment: _Optional[_Union[_slicing_pb2.Assignment, _Mapping]] = ..., audit: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("who", "action", "unix_ms")
    WHO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    who: str
    action: str
    unix_ms: int
    def __init__(self, who: _Optional[str] = ..., action: _Optional[str] = ..., unix_ms: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...

class PodStatus(_message.Message):
    __slots__ = ("pod", "engine", "slices_held", "last_report_unix_ms", "slice_load")
    POD_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SLICES_HELD_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SLICE_LOAD_FIELD_NUMBER: _ClassVar[int]
    pod: _slicing_pb2.Pod
    engine: _slicing_pb2.EngineLoad
    slices_held: int
    last_report_unix_ms: int
    slice_load: float
    def __init__(self, pod: _Optional[_Union[_slicing_pb2.Pod, _Mapping]] = ..., engine: _Optional[_Union[_slicing_pb2.EngineLoad, _Mapping]] = ..., slices_held: _Optional[int] = ..., last_report_unix_ms: _Optional[int] = ..., slice_load: _Optional[float] = ...) -> None: ...

class ListPodsRequest(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: str
    def __init__(self, target: _Optional[str] = ...) -> None: ...

class ListPodsResponse(_message.Message):
    __slots__ = ("pods",)
    PODS_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodStatus]
    def __init__(self, pods: _Optional[_Iterable[_Union[PodStatus, _Mapping]]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("pod_id", "undrain")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    undrain: bool
    def __init__(self, pod_id: _Optional[str] = ..., undrain: _Optional[bool] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("pod",)
    POD_FIELD_NUMBER: _ClassVar[int]
    pod: _slicing_pb2.Pod
    def __init__(self, pod: _Optional[_Union[_slicing_pb2.Pod, _Mapping]] = ...) -> None: ...

class SetOverrideRequest(_message.Message):
    __slots__ = ("target", "override")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    target: str
    override: _slicing_pb2.Override
    def __init__(self, target: _Optional[str] = ..., override: _Optional[_Union[_slicing_pb2.Override, _Mapping]] = ...) -> None: ...

class SetOverrideResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: _slicing_pb2.Assignment
    def __init__(self, assignment: _Optional[_Union[_slicing_pb2.Assignment, _Mapping]] = ...) -> None: ...

class ClearOverridesRequest(_message.Message):
    __slots__ = ("target", "ids")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    target: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ClearOverridesResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: _slicing_pb2.Assignment
    def __init__(self, assignment: _Optional[_Union[_slicing_pb2.Assignment, _Mapping]] = ...) -> None: ...

class QuotaLimits(_message.Message):
    __slots__ = ("tenant", "requests_per_s", "tokens_per_min", "concurrent", "allotment_s", "lease_ms")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    ALLOTMENT_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    requests_per_s: float
    tokens_per_min: float
    concurrent: int
    allotment_s: float
    lease_ms: int
    def __init__(self, tenant: _Optional[str] = ..., requests_per_s: _Optional[float] = ..., tokens_per_min: _Optional[float] = ..., concurrent: _Optional[int] = ..., allotment_s: _Optional[float] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class QuotaAllotment(_message.Message):
    __slots__ = ("id", "holder", "requests", "tokens", "concurrent", "expires_unix_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    holder: str
    requests: int
    tokens: int
    concurrent: int
    expires_unix_ms: int
    def __init__(self, id: _Optional[str] = ..., holder: _Optional[str] = ..., requests: _Optional[int] = ..., tokens: _Optional[int] = ..., concurrent: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ...) -> None: ...

class QuotaStatus(_message.Message):
    __slots__ = ("limits", "requests_available", "tokens_available", "concurrent_held", "allotments")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_HELD_FIELD_NUMBER: _ClassVar[int]
    ALLOTMENTS_FIELD_NUMBER: _ClassVar[int]
    limits: QuotaLimits
    requests_available: float
    tokens_available: float
    concurrent_held: int
    allotments: _containers.RepeatedCompositeFieldContainer[QuotaAllotment]
    def __init__(self, limits: _Optional[_Union[QuotaLimits, _Mapping]] = ..., requests_available: _Optional[float] = ..., tokens_available: _Optional[float] = ..., concurrent_held: _Optional[int] = ..., allotments: _Optional[_Iterable[_Union[QuotaAllotment, _Mapping]]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("limits", "remove")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    limits: QuotaLimits
    remove: bool
    def __init__(self, limits: _Optional[_Union[QuotaLimits, _Mapping]] = ..., remove: _Optional[bool] = ...) -> None: ...

class GetQuotaRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaStatus]
    def __init__(self, quotas: _Optional[_Iterable[_Union[QuotaStatus, _Mapping]]] = ...) -> None: ...

class AllotmentReturn(_message.Message):
    __slots__ = ("id", "unused_requests", "unused_tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    UNUSED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    unused_requests: int
    unused_tokens: int
    def __init__(self, id: _Optional[str] = ..., unused_requests: _Optional[int] = ..., unused_tokens: _Optional[int] = ...) -> None: ...

class AcquireAllotmentRequest(_message.Message):
    __slots__ = ("tenant", "holder", "need_requests", "need_tokens", "concurrent", "returning")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    NEED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NEED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    RETURNING_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    holder: str
    need_requests: int
    need_tokens: int
    concurrent: int
    returning: AllotmentReturn
    def __init__(self, tenant: _Optional[str] = ..., holder: _Optional[str] = ..., need_requests: _Optional[int] = ..., need_tokens: _Optional[int] = ..., concurrent: _Optional[int] = ..., returning: _Optional[_Union[AllotmentReturn, _Mapping]] = ...) -> None: ...

class AcquireAllotmentResponse(_message.Message):
    __slots__ = ("unlimited", "allotment", "limits")
    UNLIMITED_FIELD_NUMBER: _ClassVar[int]
    ALLOTMENT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    unlimited: bool
    allotment: QuotaAllotment
    limits: QuotaLimits
    def __init__(self, unlimited: _Optional[bool] = ..., allotment: _Optional[_Union[QuotaAllotment, _Mapping]] = ..., limits: _Optional[_Union[QuotaLimits, _Mapping]] = ...) -> None: ...

class ReturnAllotmentRequest(_message.Message):
    __slots__ = ("tenant", "returning")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RETURNING_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    returning: AllotmentReturn
    def __init__(self, tenant: _Optional[str] = ..., returning: _Optional[_Union[AllotmentReturn, _Mapping]] = ...) -> None: ...

class ReturnAllotmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TenantPlacement(_message.Message):
    __slots__ = ("tenant", "home_region", "pinned")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    HOME_REGION_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    home_region: str
    pinned: bool
    def __init__(self, tenant: _Optional[str] = ..., home_region: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class SetPlacementRequest(_message.Message):
    __slots__ = ("placement", "remove")
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    placement: TenantPlacement
    remove: bool
    def __init__(self, placement: _Optional[_Union[TenantPlacement, _Mapping]] = ..., remove: _Optional[bool] = ...) -> None: ...

class ListPlacementsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPlacementsResponse(_message.Message):
    __slots__ = ("placements",)
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    placements: _containers.RepeatedCompositeFieldContainer[TenantPlacement]
    def __init__(self, placements: _Optional[_Iterable[_Union[TenantPlacement, _Mapping]]] = ...) -> None: ...

class KeyFaultRecord(_message.Message):
    __slots__ = ("target", "slice_key", "pods", "first_unix_ms", "last_unix_ms", "quarantined_until_unix_ms", "cause", "state", "suspected_until_unix_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SLICE_KEY_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    FIRST_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUSPECTED_UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    slice_key: int
    pods: _containers.RepeatedScalarFieldContainer[str]
    first_unix_ms: int
    last_unix_ms: int
    quarantined_until_unix_ms: int
    cause: str
    state: str
    suspected_until_unix_ms: int
    def __init__(self, target: _Optional[str] = ..., slice_key: _Optional[int] = ..., pods: _Optional[_Iterable[str]] = ..., first_unix_ms: _Optional[int] = ..., last_unix_ms: _Optional[int] = ..., quarantined_until_unix_ms: _Optional[int] = ..., cause: _Optional[str] = ..., state: _Optional[str] = ..., suspected_until_unix_ms: _Optional[int] = ...) -> None: ...

class ReportKeyFaultRequest(_message.Message):
    __slots__ = ("target", "slice_key", "pod_id", "cause", "quarantine_pods", "window_ms", "cooldown_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SLICE_KEY_FIELD_NUMBER: _ClassVar[int]
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_PODS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    slice_key: int
    pod_id: str
    cause: str
    quarantine_pods: int
    window_ms: int
    cooldown_ms: int
    def __init__(self, target: _Optional[str] = ..., slice_key: _Optional[int] = ..., pod_id: _Optional[str] = ..., cause: _Optional[str] = ..., quarantine_pods: _Optional[int] = ..., window_ms: _Optional[int] = ..., cooldown_ms: _Optional[int] = ...) -> None: ...

class ListQuarantinesRequest(_message.Message):
    __slots__ = ("target", "suspected")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SUSPECTED_FIELD_NUMBER: _ClassVar[int]
    target: str
    suspected: bool
    def __init__(self, target: _Optional[str] = ..., suspected: _Optional[bool] = ...) -> None: ...

class ListQuarantinesResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyFaultRecord]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyFaultRecord, _Mapping]]] = ...) -> None: ...

class ClearQuarantineRequest(_message.Message):
    __slots__ = ("target", "slice_key", "all")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SLICE_KEY_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    target: str
    slice_key: int
    all: bool
    def __init__(self, target: _Optional[str] = ..., slice_key: _Optional[int] = ..., all: _Optional[bool] = ...) -> None: ...

class ClearQuarantineResponse(_message.Message):
    __slots__ = ("cleared",)
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    cleared: int
    def __init__(self, cleared: _Optional[int] = ...) -> None: ...

class RolloutSLO(_message.Message):
    __slots__ = ("max_error_rate", "max_ttft_p99_ms", "min_requests", "window_s")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TTFT_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_ttft_p99_ms: float
    min_requests: int
    window_s: float
    def __init__(self, max_error_rate: _Optional[float] = ..., max_ttft_p99_ms: _Optional[float] = ..., min_requests: _Optional[int] = ..., window_s: _Optional[float] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("model", "blue", "green", "steps", "step", "state", "slo", "step_interval_s", "generation", "changed_unix_ms", "reason", "fraction", "judged", "green_requests", "green_errors", "green_ttft_p99_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BLUE_FIELD_NUMBER: _ClassVar[int]
    GREEN_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    STEP_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    GREEN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    GREEN_ERRORS_FIELD_NUMBER: _ClassVar[int]
    GREEN_TTFT_P99_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    blue: str
    green: str
    steps: _containers.RepeatedScalarFieldContainer[float]
    step: int
    state: str
    slo: RolloutSLO
    step_interval_s: float
    generation: int
    changed_unix_ms: int
    reason: str
    fraction: float
    judged: bool
    green_requests: int
    green_errors: int
    green_ttft_p99_ms: float
    def __init__(self, model: _Optional[str] = ..., blue: _Optional[str] = ..., green: _Optional[str] = ..., steps: _Optional[_Iterable[float]] = ..., step: _Optional[int] = ..., state: _Optional[str] = ..., slo: _Optional[_Union[RolloutSLO, _Mapping]] = ..., step_interval_s: _Optional[float] = ..., generation: _Optional[int] = ..., changed_unix_ms: _Optional[int] = ..., reason: _Optional[str] = ..., fraction: _Optional[float] = ..., judged: _Optional[bool] = ..., green_requests: _Optional[int] = ..., green_errors: _Optional[int] = ..., green_ttft_p99_ms: _Optional[float] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "blue", "green", "steps", "slo", "step_interval_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BLUE_FIELD_NUMBER: _ClassVar[int]
    GREEN_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    STEP_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    blue: str
    green: str
    steps: _containers.RepeatedScalarFieldContainer[float]
    slo: RolloutSLO
    step_interval_s: float
    def __init__(self, model: _Optional[str] = ..., blue: _Optional[str] = ..., green: _Optional[str] = ..., steps: _Optional[_Iterable[float]] = ..., slo: _Optional[_Union[RolloutSLO, _Mapping]] = ..., step_interval_s: _Optional[float] = ...) -> None: ...

class ChangeRolloutRequest(_message.Message):
    __slots__ = ("model", "action", "reason")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ChangeRolloutRequest.Action]
        PAUSE: _ClassVar[ChangeRolloutRequest.Action]
        RESUME: _ClassVar[ChangeRolloutRequest.Action]
        PROMOTE: _ClassVar[ChangeRolloutRequest.Action]
        ROLLBACK: _ClassVar[ChangeRolloutRequest.Action]
    ACTION_UNSPECIFIED: ChangeRolloutRequest.Action
    PAUSE: ChangeRolloutRequest.Action
    RESUME: ChangeRolloutRequest.Action
    PROMOTE: ChangeRolloutRequest.Action
    ROLLBACK: ChangeRolloutRequest.Action
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: ChangeRolloutRequest.Action
    reason: str
    def __init__(self, model: _Optional[str] = ..., action: _Optional[_Union[ChangeRolloutRequest.Action, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...
