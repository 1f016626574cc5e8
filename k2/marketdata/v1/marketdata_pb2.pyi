import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssetClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSET_CLASS_UNSPECIFIED: _ClassVar[AssetClass]
    ASSET_CLASS_EQUITIES: _ClassVar[AssetClass]
    ASSET_CLASS_CRYPTO: _ClassVar[AssetClass]
    ASSET_CLASS_FUTURES: _ClassVar[AssetClass]
    ASSET_CLASS_OPTIONS: _ClassVar[AssetClass]

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_BUY: _ClassVar[Side]
    SIDE_SELL: _ClassVar[Side]
    SIDE_SELL_SHORT: _ClassVar[Side]
    SIDE_UNKNOWN: _ClassVar[Side]
ASSET_CLASS_UNSPECIFIED: AssetClass
ASSET_CLASS_EQUITIES: AssetClass
ASSET_CLASS_CRYPTO: AssetClass
ASSET_CLASS_FUTURES: AssetClass
ASSET_CLASS_OPTIONS: AssetClass
SIDE_UNSPECIFIED: Side
SIDE_BUY: Side
SIDE_SELL: Side
SIDE_SELL_SHORT: Side
SIDE_UNKNOWN: Side

class Trade(_message.Message):
    __slots__ = ("message_id", "trade_id", "symbol", "exchange", "asset_class", "timestamp", "price", "quantity", "currency", "side", "trade_conditions", "source_sequence", "ingestion_timestamp", "platform_sequence", "vendor_data")
    class VendorDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    ASSET_CLASS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TRADE_CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INGESTION_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VENDOR_DATA_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    trade_id: str
    symbol: str
    exchange: str
    asset_class: AssetClass
    timestamp: _timestamp_pb2.Timestamp
    price: str
    quantity: str
    currency: str
    side: Side
    trade_conditions: _containers.RepeatedScalarFieldContainer[str]
    source_sequence: int
    ingestion_timestamp: _timestamp_pb2.Timestamp
    platform_sequence: int
    vendor_data: _containers.ScalarMap[str, str]
    def __init__(self, message_id: _Optional[str] = ..., trade_id: _Optional[str] = ..., symbol: _Optional[str] = ..., exchange: _Optional[str] = ..., asset_class: _Optional[_Union[AssetClass, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., price: _Optional[str] = ..., quantity: _Optional[str] = ..., currency: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., trade_conditions: _Optional[_Iterable[str]] = ..., source_sequence: _Optional[int] = ..., ingestion_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., platform_sequence: _Optional[int] = ..., vendor_data: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Quote(_message.Message):
    __slots__ = ("message_id", "quote_id", "symbol", "exchange", "asset_class", "timestamp", "bid_price", "bid_quantity", "ask_price", "ask_quantity", "currency", "source_sequence", "ingestion_timestamp", "platform_sequence", "vendor_data")
    class VendorDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    ASSET_CLASS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INGESTION_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VENDOR_DATA_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    quote_id: str
    symbol: str
    exchange: str
    asset_class: AssetClass
    timestamp: _timestamp_pb2.Timestamp
    bid_price: str
    bid_quantity: str
    ask_price: str
    ask_quantity: str
    currency: str
    source_sequence: int
    ingestion_timestamp: _timestamp_pb2.Timestamp
    platform_sequence: int
    vendor_data: _containers.ScalarMap[str, str]
    def __init__(self, message_id: _Optional[str] = ..., quote_id: _Optional[str] = ..., symbol: _Optional[str] = ..., exchange: _Optional[str] = ..., asset_class: _Optional[_Union[AssetClass, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bid_price: _Optional[str] = ..., bid_quantity: _Optional[str] = ..., ask_price: _Optional[str] = ..., ask_quantity: _Optional[str] = ..., currency: _Optional[str] = ..., source_sequence: _Optional[int] = ..., ingestion_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., platform_sequence: _Optional[int] = ..., vendor_data: _Optional[_Mapping[str, str]] = ...) -> None: ...
