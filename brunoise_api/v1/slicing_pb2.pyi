from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PodState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POD_STATE_UNSPECIFIED: _ClassVar[PodState]
    POD_STATE_ACTIVE: _ClassVar[PodState]
    POD_STATE_DRAINING: _ClassVar[PodState]
    POD_STATE_DEAD: _ClassVar[PodState]
POD_STATE_UNSPECIFIED: PodState
POD_STATE_ACTIVE: PodState
POD_STATE_DRAINING: PodState
POD_STATE_DEAD: PodState

class Slice(_message.Message):
    __slots__ = ("lo", "hi")
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    lo: int
    hi: int
    def __init__(self, lo: _Optional[int] = ..., hi: _Optional[int] = ...) -> None: ...

class Pod(_message.Message):
    __slots__ = ("id", "address", "labels", "state", "http_address", "target")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    labels: _containers.ScalarMap[str, str]
    state: PodState
    http_address: str
    target: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[PodState, str]] = ..., http_address: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class SliceAssignment(_message.Message):
    __slots__ = ("slice", "replicas", "leaving", "load", "since_generation", "warming")
    SLICE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    SINCE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    WARMING_FIELD_NUMBER: _ClassVar[int]
    slice: Slice
    replicas: _containers.RepeatedScalarFieldContainer[str]
    leaving: _containers.RepeatedScalarFieldContainer[str]
    load: float
    since_generation: int
    warming: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, slice: _Optional[_Union[Slice, _Mapping]] = ..., replicas: _Optional[_Iterable[str]] = ..., leaving: _Optional[_Iterable[str]] = ..., load: _Optional[float] = ..., since_generation: _Optional[int] = ..., warming: _Optional[_Iterable[str]] = ...) -> None: ...

class MoveOverride(_message.Message):
    __slots__ = ("key", "pods")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    key: int
    pods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[int] = ..., pods: _Optional[_Iterable[str]] = ...) -> None: ...

class SplitOverride(_message.Message):
    __slots__ = ("at",)
    AT_FIELD_NUMBER: _ClassVar[int]
    at: int
    def __init__(self, at: _Optional[int] = ...) -> None: ...

class MergeOverride(_message.Message):
    __slots__ = ("lo", "hi")
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    lo: int
    hi: int
    def __init__(self, lo: _Optional[int] = ..., hi: _Optional[int] = ...) -> None: ...

class Override(_message.Message):
    __slots__ = ("id", "move", "split", "merge")
    ID_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    move: MoveOverride
    split: SplitOverride
    merge: MergeOverride
    def __init__(self, id: _Optional[str] = ..., move: _Optional[_Union[MoveOverride, _Mapping]] = ..., split: _Optional[_Union[SplitOverride, _Mapping]] = ..., merge: _Optional[_Union[MergeOverride, _Mapping]] = ...) -> None: ...

class RoundStats(_message.Message):
    __slots__ = ("moves", "splits", "merges", "replications", "dereplications", "fills", "churn", "imbalance", "dropped_pods")
    MOVES_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    REPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    DEREPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    FILLS_FIELD_NUMBER: _ClassVar[int]
    CHURN_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_PODS_FIELD_NUMBER: _ClassVar[int]
    moves: int
    splits: int
    merges: int
    replications: int
    dereplications: int
    fills: int
    churn: float
    imbalance: float
    dropped_pods: int
    def __init__(self, moves: _Optional[int] = ..., splits: _Optional[int] = ..., merges: _Optional[int] = ..., replications: _Optional[int] = ..., dereplications: _Optional[int] = ..., fills: _Optional[int] = ..., churn: _Optional[float] = ..., imbalance: _Optional[float] = ..., dropped_pods: _Optional[int] = ...) -> None: ...

class TargetConfig(_message.Message):
    __slots__ = ("target", "min_replicas", "max_replicas", "imbalance_tolerance", "churn_budget", "split_threshold", "merge_threshold", "dereplicate_threshold", "hot_key_fraction", "min_slices_per_pod", "max_slices_per_pod", "initial_slices", "eligibility", "model", "calm", "imbalance_target", "act_after_rounds", "cooldown_rounds", "load_smoothing", "move_cost_weight", "replica_true_load", "warm_deadline_s")
    class EligibilityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CHURN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MERGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEREPLICATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HOT_KEY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_SLICES_PER_POD_FIELD_NUMBER: _ClassVar[int]
    MAX_SLICES_PER_POD_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SLICES_FIELD_NUMBER: _ClassVar[int]
    ELIGIBILITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CALM_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_TARGET_FIELD_NUMBER: _ClassVar[int]
    ACT_AFTER_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LOAD_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    MOVE_COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_TRUE_LOAD_FIELD_NUMBER: _ClassVar[int]
    WARM_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    target: str
    min_replicas: int
    max_replicas: int
    imbalance_tolerance: float
    churn_budget: float
    split_threshold: float
    merge_threshold: float
    dereplicate_threshold: float
    hot_key_fraction: float
    min_slices_per_pod: int
    max_slices_per_pod: int
    initial_slices: int
    eligibility: _containers.ScalarMap[str, str]
    model: str
    calm: bool
    imbalance_target: float
    act_after_rounds: int
    cooldown_rounds: int
    load_smoothing: float
    move_cost_weight: float
    replica_true_load: bool
    warm_deadline_s: float
    def __init__(self, target: _Optional[str] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., imbalance_tolerance: _Optional[float] = ..., churn_budget: _Optional[float] = ..., split_threshold: _Optional[float] = ..., merge_threshold: _Optional[float] = ..., dereplicate_threshold: _Optional[float] = ..., hot_key_fraction: _Optional[float] = ..., min_slices_per_pod: _Optional[int] = ..., max_slices_per_pod: _Optional[int] = ..., initial_slices: _Optional[int] = ..., eligibility: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ..., calm: _Optional[bool] = ..., imbalance_target: _Optional[float] = ..., act_after_rounds: _Optional[int] = ..., cooldown_rounds: _Optional[int] = ..., load_smoothing: _Optional[float] = ..., move_cost_weight: _Optional[float] = ..., replica_true_load: _Optional[bool] = ..., warm_deadline_s: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("target", "generation", "slices", "pods", "config", "overrides", "stats", "created_unix_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    generation: int
    slices: _containers.RepeatedCompositeFieldContainer[SliceAssignment]
    pods: _containers.RepeatedCompositeFieldContainer[Pod]
    config: TargetConfig
    overrides: _containers.RepeatedCompositeFieldContainer[Override]
    stats: RoundStats
    created_unix_ms: int
    def __init__(self, target: _Optional[str] = ..., generation: _Optional[int] = ..., slices: _Optional[_Iterable[_Union[SliceAssignment, _Mapping]]] = ..., pods: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ..., config: _Optional[_Union[TargetConfig, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[Override, _Mapping]]] = ..., stats: _Optional[_Union[RoundStats, _Mapping]] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class AssignmentDiff(_message.Message):
    __slots__ = ("target", "from_generation", "to_generation", "upserts", "removed_los", "pods", "config", "overrides", "stats", "created_unix_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FROM_GENERATION_FIELD_NUMBER: _ClassVar[int]
    TO_GENERATION_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_LOS_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    from_generation: int
    to_generation: int
    upserts: _containers.RepeatedCompositeFieldContainer[SliceAssignment]
    removed_los: _containers.RepeatedScalarFieldContainer[int]
    pods: _containers.RepeatedCompositeFieldContainer[Pod]
    config: TargetConfig
    overrides: _containers.RepeatedCompositeFieldContainer[Override]
    stats: RoundStats
    created_unix_ms: int
    def __init__(self, target: _Optional[str] = ..., from_generation: _Optional[int] = ..., to_generation: _Optional[int] = ..., upserts: _Optional[_Iterable[_Union[SliceAssignment, _Mapping]]] = ..., removed_los: _Optional[_Iterable[int]] = ..., pods: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ..., config: _Optional[_Union[TargetConfig, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[Override, _Mapping]]] = ..., stats: _Optional[_Union[RoundStats, _Mapping]] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class EngineLoad(_message.Message):
    __slots__ = ("running", "waiting", "kv_usage", "tokens_in_flight", "prefix_hit_rate", "capacity", "load")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    running: int
    waiting: int
    kv_usage: float
    tokens_in_flight: int
    prefix_hit_rate: float
    capacity: float
    load: float
    def __init__(self, running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_usage: _Optional[float] = ..., tokens_in_flight: _Optional[int] = ..., prefix_hit_rate: _Optional[float] = ..., capacity: _Optional[float] = ..., load: _Optional[float] = ...) -> None: ...

class KeyCount(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: int
    count: float
    def __init__(self, key: _Optional[int] = ..., count: _Optional[float] = ...) -> None: ...

class SliceLoad(_message.Message):
    __slots__ = ("slice", "load", "top_keys", "requests", "misrouted")
    SLICE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    TOP_KEYS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MISROUTED_FIELD_NUMBER: _ClassVar[int]
    slice: Slice
    load: float
    top_keys: _containers.RepeatedCompositeFieldContainer[KeyCount]
    requests: int
    misrouted: int
    def __init__(self, slice: _Optional[_Union[Slice, _Mapping]] = ..., load: _Optional[float] = ..., top_keys: _Optional[_Iterable[_Union[KeyCount, _Mapping]]] = ..., requests: _Optional[int] = ..., misrouted: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("pod_id", "target", "engine", "slices", "seq", "unix_ms", "outcomes", "warm")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    target: str
    engine: EngineLoad
    slices: _containers.RepeatedCompositeFieldContainer[SliceLoad]
    seq: int
    unix_ms: int
    outcomes: RequestOutcomes
    warm: _containers.RepeatedCompositeFieldContainer[Slice]
    def __init__(self, pod_id: _Optional[str] = ..., target: _Optional[str] = ..., engine: _Optional[_Union[EngineLoad, _Mapping]] = ..., slices: _Optional[_Iterable[_Union[SliceLoad, _Mapping]]] = ..., seq: _Optional[int] = ..., unix_ms: _Optional[int] = ..., outcomes: _Optional[_Union[RequestOutcomes, _Mapping]] = ..., warm: _Optional[_Iterable[_Union[Slice, _Mapping]]] = ...) -> None: ...

class RequestOutcomes(_message.Message):
    __slots__ = ("requests", "errors", "ttft_ms_buckets")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    errors: int
    ttft_ms_buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, requests: _Optional[int] = ..., errors: _Optional[int] = ..., ttft_ms_buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class CacheSummary(_message.Message):
    __slots__ = ("chunk_bytes", "prefix_hashes", "blocks_total", "blocks_used", "epoch", "block_tokens", "incarnation")
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    chunk_bytes: int
    prefix_hashes: _containers.RepeatedScalarFieldContainer[int]
    blocks_total: int
    blocks_used: int
    epoch: int
    block_tokens: int
    incarnation: int
    def __init__(self, chunk_bytes: _Optional[int] = ..., prefix_hashes: _Optional[_Iterable[int]] = ..., blocks_total: _Optional[int] = ..., blocks_used: _Optional[int] = ..., epoch: _Optional[int] = ..., block_tokens: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...
