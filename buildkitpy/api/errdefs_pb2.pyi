from buildkitpy.api import ops_pb2 as _ops_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Vertex(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("info", "ranges")
    INFO_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    info: _ops_pb2.SourceInfo
    ranges: _containers.RepeatedCompositeFieldContainer[_ops_pb2.Range]
    def __init__(self, info: _Optional[_Union[_ops_pb2.SourceInfo, _Mapping]] = ..., ranges: _Optional[_Iterable[_Union[_ops_pb2.Range, _Mapping]]] = ...) -> None: ...

class Frontend(_message.Message):
    __slots__ = ("name", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class FrontendCap(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CompatibilityFeature(_message.Message):
    __slots__ = ("version", "feature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    feature: str
    def __init__(self, version: _Optional[int] = ..., feature: _Optional[str] = ...) -> None: ...

class Subrequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Solve(_message.Message):
    __slots__ = ("inputIDs", "mountIDs", "op", "file", "cache", "description")
    class DescriptionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INPUTIDS_FIELD_NUMBER: _ClassVar[int]
    MOUNTIDS_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    inputIDs: _containers.RepeatedScalarFieldContainer[str]
    mountIDs: _containers.RepeatedScalarFieldContainer[str]
    op: _ops_pb2.Op
    file: FileAction
    cache: ContentCache
    description: _containers.ScalarMap[str, str]
    def __init__(self, inputIDs: _Optional[_Iterable[str]] = ..., mountIDs: _Optional[_Iterable[str]] = ..., op: _Optional[_Union[_ops_pb2.Op, _Mapping]] = ..., file: _Optional[_Union[FileAction, _Mapping]] = ..., cache: _Optional[_Union[ContentCache, _Mapping]] = ..., description: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FileAction(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class ContentCache(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class ProvenanceMaterialsIncomplete(_message.Message):
    __slots__ = ("incomplete",)
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    incomplete: _containers.RepeatedCompositeFieldContainer[ProvenanceMaterialIncomplete]
    def __init__(self, incomplete: _Optional[_Iterable[_Union[ProvenanceMaterialIncomplete, _Mapping]]] = ...) -> None: ...

class ProvenanceMaterialIncomplete(_message.Message):
    __slots__ = ("op", "name", "method", "uri", "final_uri", "reason")
    OP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    FINAL_URI_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    op: str
    name: str
    method: str
    uri: str
    final_uri: str
    reason: str
    def __init__(self, op: _Optional[str] = ..., name: _Optional[str] = ..., method: _Optional[str] = ..., uri: _Optional[str] = ..., final_uri: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
