from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FindExportersRequest(_message.Message):
    __slots__ = ("metadata", "refs")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    metadata: _containers.ScalarMap[str, bytes]
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, metadata: _Optional[_Mapping[str, bytes]] = ..., refs: _Optional[_Iterable[str]] = ...) -> None: ...

class FindExportersResponse(_message.Message):
    __slots__ = ("exporters",)
    EXPORTERS_FIELD_NUMBER: _ClassVar[int]
    exporters: _containers.RepeatedCompositeFieldContainer[ExporterRequest]
    def __init__(self, exporters: _Optional[_Iterable[_Union[ExporterRequest, _Mapping]]] = ...) -> None: ...

class ExporterRequest(_message.Message):
    __slots__ = ("Type", "Attrs")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    Type: str
    Attrs: _containers.ScalarMap[str, str]
    def __init__(self, Type: _Optional[str] = ..., Attrs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FinalizeExportRequest(_message.Message):
    __slots__ = ("exporter_response",)
    class ExporterResponseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPORTER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    exporter_response: _containers.ScalarMap[str, str]
    def __init__(self, exporter_response: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FinalizeExportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
