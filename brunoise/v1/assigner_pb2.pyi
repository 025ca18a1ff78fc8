from brunoise.v1 import slicing_pb2 as _slicing_pb2
from google.protobuf.internal import containers as _containers
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
    __slots__ = ("pod", "load", "lease_ttl_ms")
    POD_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    pod: _slicing_pb2.Pod
    load: _slicing_pb2.LoadReport
    lease_ttl_ms: int
    def __init__(self, pod: _Optional[_Union[_slicing_pb2.Pod, _Mapping]] = ..., load: _Optional[_Union[_slicing_pb2.LoadReport, _Mapping]] = ..., lease_ttl_ms: _Optional[int] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("generation", "slices", "report_interval_ms", "leader_id", "state")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    generation: int
    slices: _containers.RepeatedCompositeFieldContainer[_slicing_pb2.Slice]
    report_interval_ms: int
    leader_id: str
    state: _slicing_pb2.PodState
    def __init__(self, generation: _Optional[int] = ..., slices: _Optional[_Iterable[_Union[_slicing_pb2.Slice, _Mapping]]] = ..., report_interval_ms: _Optional[int] = ..., leader_id: _Optional[str] = ..., state: _Optional[_Union[_slicing_pb2.PodState, str]] = ...) -> None: ...

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
