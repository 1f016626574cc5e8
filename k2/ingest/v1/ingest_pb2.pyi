import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from k2.auth.v1 import auth_pb2 as _auth_pb2
from k2.marketdata.v1 import marketdata_pb2 as _marketdata_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_FORMAT_UNSPECIFIED: _ClassVar[FileFormat]
    FILE_FORMAT_ASX_TRADES: _ClassVar[FileFormat]
    FILE_FORMAT_ASX_QUOTES: _ClassVar[FileFormat]
    FILE_FORMAT_CSV_TRADES: _ClassVar[FileFormat]
    FILE_FORMAT_CSV_QUOTES: _ClassVar[FileFormat]

class ConnectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATE_UNSPECIFIED: _ClassVar[ConnectionState]
    CONNECTION_STATE_CONNECTING: _ClassVar[ConnectionState]
    CONNECTION_STATE_CONNECTED: _ClassVar[ConnectionState]
    CONNECTION_STATE_RECONNECTING: _ClassVar[ConnectionState]
    CONNECTION_STATE_STOPPED: _ClassVar[ConnectionState]

class CircuitState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNSPECIFIED: _ClassVar[CircuitState]
    CIRCUIT_STATE_CLOSED: _ClassVar[CircuitState]
    CIRCUIT_STATE_OPEN: _ClassVar[CircuitState]
    CIRCUIT_STATE_HALF_OPEN: _ClassVar[CircuitState]
FILE_FORMAT_UNSPECIFIED: FileFormat
FILE_FORMAT_ASX_TRADES: FileFormat
FILE_FORMAT_ASX_QUOTES: FileFormat
FILE_FORMAT_CSV_TRADES: FileFormat
FILE_FORMAT_CSV_QUOTES: FileFormat
CONNECTION_STATE_UNSPECIFIED: ConnectionState
CONNECTION_STATE_CONNECTING: ConnectionState
CONNECTION_STATE_CONNECTED: ConnectionState
CONNECTION_STATE_RECONNECTING: ConnectionState
CONNECTION_STATE_STOPPED: ConnectionState
CIRCUIT_STATE_UNSPECIFIED: CircuitState
CIRCUIT_STATE_CLOSED: CircuitState
CIRCUIT_STATE_OPEN: CircuitState
CIRCUIT_STATE_HALF_OPEN: CircuitState

class PublishTradesRequest(_message.Message):
    __slots__ = ("batch_id", "trades")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    trades: _containers.RepeatedCompositeFieldContainer[_marketdata_pb2.Trade]
    def __init__(self, batch_id: _Optional[str] = ..., trades: _Optional[_Iterable[_Union[_marketdata_pb2.Trade, _Mapping]]] = ...) -> None: ...

class PublishTradesResponse(_message.Message):
    __slots__ = ("batch_id", "accepted", "rejections", "duplicate")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    duplicate: bool
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PublishQuotesRequest(_message.Message):
    __slots__ = ("batch_id", "quotes")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    quotes: _containers.RepeatedCompositeFieldContainer[_marketdata_pb2.Quote]
    def __init__(self, batch_id: _Optional[str] = ..., quotes: _Optional[_Iterable[_Union[_marketdata_pb2.Quote, _Mapping]]] = ...) -> None: ...

class PublishQuotesResponse(_message.Message):
    __slots__ = ("batch_id", "accepted", "rejections", "duplicate")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    duplicate: bool
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "field", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LoadFilesRequest(_message.Message):
    __slots__ = ("paths", "format", "reference_data_path")
    PATHS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    format: FileFormat
    reference_data_path: str
    def __init__(self, paths: _Optional[_Iterable[str]] = ..., format: _Optional[_Union[FileFormat, str]] = ..., reference_data_path: _Optional[str] = ...) -> None: ...

class LoadFilesResponse(_message.Message):
    __slots__ = ("progress", "summary")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    progress: LoadProgress
    summary: LoadSummary
    def __init__(self, progress: _Optional[_Union[LoadProgress, _Mapping]] = ..., summary: _Optional[_Union[LoadSummary, _Mapping]] = ...) -> None: ...

class LoadProgress(_message.Message):
    __slots__ = ("path", "rows_read", "rows_accepted", "rows_rejected", "rows_per_second")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROWS_READ_FIELD_NUMBER: _ClassVar[int]
    ROWS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    path: str
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    rows_per_second: float
    def __init__(self, path: _Optional[str] = ..., rows_read: _Optional[int] = ..., rows_accepted: _Optional[int] = ..., rows_rejected: _Optional[int] = ..., rows_per_second: _Optional[float] = ...) -> None: ...

class LoadSummary(_message.Message):
    __slots__ = ("files", "rows_read", "rows_accepted", "rows_rejected", "seconds")
    FILES_FIELD_NUMBER: _ClassVar[int]
    ROWS_READ_FIELD_NUMBER: _ClassVar[int]
    ROWS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[LoadProgress]
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    seconds: float
    def __init__(self, files: _Optional[_Iterable[_Union[LoadProgress, _Mapping]]] = ..., rows_read: _Optional[int] = ..., rows_accepted: _Optional[int] = ..., rows_rejected: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class GetFeedStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetFeedStatusResponse(_message.Message):
    __slots__ = ("feeds",)
    FEEDS_FIELD_NUMBER: _ClassVar[int]
    feeds: _containers.RepeatedCompositeFieldContainer[FeedStatus]
    def __init__(self, feeds: _Optional[_Iterable[_Union[FeedStatus, _Mapping]]] = ...) -> None: ...

class FeedStatus(_message.Message):
    __slots__ = ("name", "state", "endpoint", "streams", "symbols", "messages_per_second", "trades_per_second", "last_event_time", "reconnects_by_reason", "gaps_detected", "trades_missed", "circuit_state", "connections", "recent_gaps", "trades_backfilled", "connection_statuses", "most_active", "sequence_resets", "recent_resets")
    class ReconnectsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TRADES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    GAPS_DETECTED_FIELD_NUMBER: _ClassVar[int]
    TRADES_MISSED_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    RECENT_GAPS_FIELD_NUMBER: _ClassVar[int]
    TRADES_BACKFILLED_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATUSES_FIELD_NUMBER: _ClassVar[int]
    MOST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_RESETS_FIELD_NUMBER: _ClassVar[int]
    RECENT_RESETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ConnectionState
    endpoint: str
    streams: _containers.RepeatedScalarFieldContainer[str]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    messages_per_second: float
    trades_per_second: float
    last_event_time: _timestamp_pb2.Timestamp
    reconnects_by_reason: _containers.ScalarMap[str, int]
    gaps_detected: int
    trades_missed: int
    circuit_state: CircuitState
    connections: int
    recent_gaps: _containers.RepeatedCompositeFieldContainer[Gap]
    trades_backfilled: int
    connection_statuses: _containers.RepeatedCompositeFieldContainer[ConnectionStatus]
    most_active: _containers.RepeatedCompositeFieldContainer[SymbolActivity]
    sequence_resets: int
    recent_resets: _containers.RepeatedCompositeFieldContainer[SequenceReset]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ConnectionState, str]] = ..., endpoint: _Optional[str] = ..., streams: _Optional[_Iterable[str]] = ..., symbols: _Optional[_Iterable[str]] = ..., messages_per_second: _Optional[float] = ..., trades_per_second: _Optional[float] = ..., last_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reconnects_by_reason: _Optional[_Mapping[str, int]] = ..., gaps_detected: _Optional[int] = ..., trades_missed: _Optional[int] = ..., circuit_state: _Optional[_Union[CircuitState, str]] = ..., connections: _Optional[int] = ..., recent_gaps: _Optional[_Iterable[_Union[Gap, _Mapping]]] = ..., trades_backfilled: _Optional[int] = ..., connection_statuses: _Optional[_Iterable[_Union[ConnectionStatus, _Mapping]]] = ..., most_active: _Optional[_Iterable[_Union[SymbolActivity, _Mapping]]] = ..., sequence_resets: _Optional[int] = ..., recent_resets: _Optional[_Iterable[_Union[SequenceReset, _Mapping]]] = ...) -> None: ...

class SequenceReset(_message.Message):
    __slots__ = ("symbol", "previous_trade_id", "trade_id", "detected_at")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    previous_trade_id: int
    trade_id: int
    detected_at: _timestamp_pb2.Timestamp
    def __init__(self, symbol: _Optional[str] = ..., previous_trade_id: _Optional[int] = ..., trade_id: _Optional[int] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SymbolActivity(_message.Message):
    __slots__ = ("symbol", "trades", "quotes")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    trades: int
    quotes: int
    def __init__(self, symbol: _Optional[str] = ..., trades: _Optional[int] = ..., quotes: _Optional[int] = ...) -> None: ...

class ConnectionStatus(_message.Message):
    __slots__ = ("number", "state", "endpoint", "streams", "symbols", "frames", "reconnects", "connected_since")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    number: int
    state: ConnectionState
    endpoint: str
    streams: int
    symbols: int
    frames: int
    reconnects: int
    connected_since: _timestamp_pb2.Timestamp
    def __init__(self, number: _Optional[int] = ..., state: _Optional[_Union[ConnectionState, str]] = ..., endpoint: _Optional[str] = ..., streams: _Optional[int] = ..., symbols: _Optional[int] = ..., frames: _Optional[int] = ..., reconnects: _Optional[int] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("symbol", "first_missing", "last_missing", "detected_at")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    FIRST_MISSING_FIELD_NUMBER: _ClassVar[int]
    LAST_MISSING_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    first_missing: int
    last_missing: int
    detected_at: _timestamp_pb2.Timestamp
    def __init__(self, symbol: _Optional[str] = ..., first_missing: _Optional[int] = ..., last_missing: _Optional[int] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
