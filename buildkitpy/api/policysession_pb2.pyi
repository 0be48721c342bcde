from buildkitpy.api import gateway_pb2 as _gateway_pb2
from buildkitpy.api import ops_pb2 as _ops_pb2
from buildkitpy.api import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckPolicyRequest(_message.Message):
    __slots__ = ("Platform", "Source", "caps")
    class CapsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAPS_FIELD_NUMBER: _ClassVar[int]
    Platform: _ops_pb2.Platform
    Source: _gateway_pb2.ResolveSourceMetaResponse
    caps: _containers.ScalarMap[str, bool]
    def __init__(self, Platform: _Optional[_Union[_ops_pb2.Platform, _Mapping]] = ..., Source: _Optional[_Union[_gateway_pb2.ResolveSourceMetaResponse, _Mapping]] = ..., caps: _Optional[_Mapping[str, bool]] = ...) -> None: ...

class CheckPolicyResponse(_message.Message):
    __slots__ = ("decision", "request")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    decision: DecisionResponse
    request: _gateway_pb2.ResolveSourceMetaRequest
    def __init__(self, decision: _Optional[_Union[DecisionResponse, _Mapping]] = ..., request: _Optional[_Union[_gateway_pb2.ResolveSourceMetaRequest, _Mapping]] = ...) -> None: ...

class DecisionResponse(_message.Message):
    __slots__ = ("action", "denyMessages", "update")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DENYMESSAGES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    action: _policy_pb2.PolicyAction
    denyMessages: _containers.RepeatedCompositeFieldContainer[DenyMessage]
    update: _ops_pb2.SourceOp
    def __init__(self, action: _Optional[_Union[_policy_pb2.PolicyAction, str]] = ..., denyMessages: _Optional[_Iterable[_Union[DenyMessage, _Mapping]]] = ..., update: _Optional[_Union[_ops_pb2.SourceOp, _Mapping]] = ...) -> None: ...

class DenyMessage(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...
