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

class RowFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROW_FORMAT_UNSPECIFIED: _ClassVar[RowFormat]
    ROW_FORMAT_PROTO: _ClassVar[RowFormat]
    ROW_FORMAT_ARROW: _ClassVar[RowFormat]

class BarInterval(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAR_INTERVAL_UNSPECIFIED: _ClassVar[BarInterval]
    BAR_INTERVAL_1S: _ClassVar[BarInterval]
    BAR_INTERVAL_1M: _ClassVar[BarInterval]
    BAR_INTERVAL_5M: _ClassVar[BarInterval]
    BAR_INTERVAL_15M: _ClassVar[BarInterval]
    BAR_INTERVAL_1H: _ClassVar[BarInterval]
    BAR_INTERVAL_1D: _ClassVar[BarInterval]
ROW_FORMAT_UNSPECIFIED: RowFormat
ROW_FORMAT_PROTO: RowFormat
ROW_FORMAT_ARROW: RowFormat
BAR_INTERVAL_UNSPECIFIED: BarInterval
BAR_INTERVAL_1S: BarInterval
BAR_INTERVAL_1M: BarInterval
BAR_INTERVAL_5M: BarInterval
BAR_INTERVAL_15M: BarInterval
BAR_INTERVAL_1H: BarInterval
BAR_INTERVAL_1D: BarInterval

class QueryTradesRequest(_message.Message):
    __slots__ = ("symbols", "exchange", "start", "end", "limit", "page_token", "format")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    exchange: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    format: RowFormat
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., exchange: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., format: _Optional[_Union[RowFormat, str]] = ...) -> None: ...

class QueryTradesResponse(_message.Message):
    __slots__ = ("trades", "next_page_token", "arrow")
    TRADES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ARROW_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[_marketdata_pb2.Trade]
    next_page_token: str
    arrow: bytes
    def __init__(self, trades: _Optional[_Iterable[_Union[_marketdata_pb2.Trade, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., arrow: _Optional[bytes] = ...) -> None: ...

class QueryQuotesRequest(_message.Message):
    __slots__ = ("symbols", "exchange", "start", "end", "limit", "page_token", "format")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    exchange: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    format: RowFormat
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., exchange: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., format: _Optional[_Union[RowFormat, str]] = ...) -> None: ...

class QueryQuotesResponse(_message.Message):
    __slots__ = ("quotes", "next_page_token", "arrow")
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ARROW_FIELD_NUMBER: _ClassVar[int]
    quotes: _containers.RepeatedCompositeFieldContainer[_marketdata_pb2.Quote]
    next_page_token: str
    arrow: bytes
    def __init__(self, quotes: _Optional[_Iterable[_Union[_marketdata_pb2.Quote, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., arrow: _Optional[bytes] = ...) -> None: ...

class GetBarsRequest(_message.Message):
    __slots__ = ("symbol", "exchange", "interval", "start", "end")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    exchange: str
    interval: BarInterval
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, symbol: _Optional[str] = ..., exchange: _Optional[str] = ..., interval: _Optional[_Union[BarInterval, str]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetBarsResponse(_message.Message):
    __slots__ = ("bars",)
    BARS_FIELD_NUMBER: _ClassVar[int]
    bars: _containers.RepeatedCompositeFieldContainer[Bar]
    def __init__(self, bars: _Optional[_Iterable[_Union[Bar, _Mapping]]] = ...) -> None: ...

class Bar(_message.Message):
    __slots__ = ("start", "open", "high", "low", "close", "volume", "vwap", "trade_count")
    START_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    VWAP_FIELD_NUMBER: _ClassVar[int]
    TRADE_COUNT_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    open: str
    high: str
    low: str
    close: str
    volume: str
    vwap: str
    trade_count: int
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., open: _Optional[str] = ..., high: _Optional[str] = ..., low: _Optional[str] = ..., close: _Optional[str] = ..., volume: _Optional[str] = ..., vwap: _Optional[str] = ..., trade_count: _Optional[int] = ...) -> None: ...

class GetLatestRequest(_message.Message):
    __slots__ = ("symbols",)
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, symbols: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLatestResponse(_message.Message):
    __slots__ = ("latest",)
    LATEST_FIELD_NUMBER: _ClassVar[int]
    latest: _containers.RepeatedCompositeFieldContainer[Latest]
    def __init__(self, latest: _Optional[_Iterable[_Union[Latest, _Mapping]]] = ...) -> None: ...

class Latest(_message.Message):
    __slots__ = ("symbol", "trade", "quote")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    trade: _marketdata_pb2.Trade
    quote: _marketdata_pb2.Quote
    def __init__(self, symbol: _Optional[str] = ..., trade: _Optional[_Union[_marketdata_pb2.Trade, _Mapping]] = ..., quote: _Optional[_Union[_marketdata_pb2.Quote, _Mapping]] = ...) -> None: ...

class SubscribeTradesRequest(_message.Message):
    __slots__ = ("symbols", "exchanges", "start", "resume_token")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    exchanges: _containers.RepeatedScalarFieldContainer[str]
    start: _timestamp_pb2.Timestamp
    resume_token: str
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., exchanges: _Optional[_Iterable[str]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resume_token: _Optional[str] = ...) -> None: ...

class SubscribeTradesResponse(_message.Message):
    __slots__ = ("trades", "resume_token", "replay", "server_time")
    TRADES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[_marketdata_pb2.Trade]
    resume_token: str
    replay: bool
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, trades: _Optional[_Iterable[_Union[_marketdata_pb2.Trade, _Mapping]]] = ..., resume_token: _Optional[str] = ..., replay: _Optional[bool] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubscribeQuotesRequest(_message.Message):
    __slots__ = ("symbols", "exchanges", "start", "resume_token")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    exchanges: _containers.RepeatedScalarFieldContainer[str]
    start: _timestamp_pb2.Timestamp
    resume_token: str
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., exchanges: _Optional[_Iterable[str]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resume_token: _Optional[str] = ...) -> None: ...

class SubscribeQuotesResponse(_message.Message):
    __slots__ = ("quotes", "resume_token", "replay", "server_time")
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    quotes: _containers.RepeatedCompositeFieldContainer[_marketdata_pb2.Quote]
    resume_token: str
    replay: bool
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, quotes: _Optional[_Iterable[_Union[_marketdata_pb2.Quote, _Mapping]]] = ..., resume_token: _Optional[str] = ..., replay: _Optional[bool] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
