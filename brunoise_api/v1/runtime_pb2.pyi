from brunoise_api.v1 import inference_pb2 as _inference_pb2
from brunoise_api.v1 import slicing_pb2 as _slicing_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
