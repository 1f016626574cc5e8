from k2.auth.v1 import auth_pb2 as _auth_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetTracingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTracingResponse(_message.Message):
    __slots__ = ("service_name", "otlp_endpoint", "sampler", "sample_ratio")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    OTLP_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    otlp_endpoint: str
    sampler: str
    sample_ratio: float
    def __init__(self, service_name: _Optional[str] = ..., otlp_endpoint: _Optional[str] = ..., sampler: _Optional[str] = ..., sample_ratio: _Optional[float] = ...) -> None: ...
