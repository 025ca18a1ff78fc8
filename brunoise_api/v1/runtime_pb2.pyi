from brunoise_api.v1 import inference_pb2 as _inference_pb2
from brunoise_api.v1 import slicing_pb2 as _slicing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HotPromptsRequest(_message.Message):
    __slots__ = ("slice", "max_prompts", "max_bytes", "kv_transfer", "recent_first", "for_request")
    SLICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIRST_FIELD_NUMBER: _ClassVar[int]
    FOR_REQUEST_FIELD_NUMBER: _ClassVar[int]
    slice: _slicing_pb2.Slice
    max_prompts: int
    max_bytes: int
    kv_transfer: bool
    recent_first: bool
    for_request: bool
    def __init__(self, slice: _Optional[_Union[_slicing_pb2.Slice, _Mapping]] = ..., max_prompts: _Optional[int] = ..., max_bytes: _Optional[int] = ..., kv_transfer: _Optional[bool] = ..., recent_first: _Optional[bool] = ..., for_request: _Optional[bool] = ...) -> None: ...

class HotPrompt(_message.Message):
    __slots__ = ("prompt", "messages", "slice_key", "weight", "kv_transfer_params")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SLICE_KEY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_PARAMS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _inference_pb2.ChatMessages
    slice_key: int
    weight: float
    kv_transfer_params: str
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Union[_inference_pb2.ChatMessages, _Mapping]] = ..., slice_key: _Optional[int] = ..., weight: _Optional[float] = ..., kv_transfer_params: _Optional[str] = ...) -> None: ...

class HotPromptsResponse(_message.Message):
    __slots__ = ("pod_id", "prompts")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    prompts: _containers.RepeatedCompositeFieldContainer[HotPrompt]
    def __init__(self, pod_id: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[HotPrompt, _Mapping]]] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ("include_cache",)
    INCLUDE_CACHE_FIELD_NUMBER: _ClassVar[int]
    include_cache: bool
    def __init__(self, include_cache: _Optional[bool] = ...) -> None: ...

class GetLoadResponse(_message.Message):
    __slots__ = ("pod_id", "ready", "engine", "cache", "unix_ms")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    ready: bool
    engine: _slicing_pb2.EngineLoad
    cache: _slicing_pb2.CacheSummary
    unix_ms: int
    def __init__(self, pod_id: _Optional[str] = ..., ready: _Optional[bool] = ..., engine: _Optional[_Union[_slicing_pb2.EngineLoad, _Mapping]] = ..., cache: _Optional[_Union[_slicing_pb2.CacheSummary, _Mapping]] = ..., unix_ms: _Optional[int] = ...) -> None: ...
