"""Rows and Kafka messages → k2.marketdata.v1 messages, and subscription responses as bytes.

Arrow rows are converted column by column (one Python list per column, then one message per row) with the same
mapping as k2.core.protos.trade_to_proto / quote_to_proto, which is much faster than going through row dicts.

Live and replayed records become "framed" bytes: the serialized message behind the tag and length of field 1 of
Subscribe{Trades,Quotes}Response (`repeated ... trades|quotes = 1`). A response is then the concatenation of its
framed records and the serialized remaining fields, so each record is serialized once however many subscribers
receive it, and subscribers with the same filter share the very same response bytes."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Message
from google.protobuf.timestamp_pb2 import Timestamp

from k2.core.avro import CURRENT, HEADER_SIZE, MAGIC, DecodeError, decode, without_logical_types
from k2.core.protos import ASSET_CLASS_VALUES, SIDE_VALUES, decimal_text, quote_to_proto, trade_to_proto
from k2.core.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_TEXT_LENGTH,
    QUOTE,
    TRADE,
    VALIDATORS,
    FieldError,
    RecordKind,
)
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade
from k2.query.v1 import query_pb2
from services.query.selection import micros

MarketMessage = Trade | Quote
FIELD_ONE_TAG = b"\x0a"  # field 1, wire type 2 (length-delimited)
RESPONSES = {TRADE: query_pb2.SubscribeTradesResponse, QUOTE: query_pb2.SubscribeQuotesResponse}
TO_PROTO: dict[RecordKind, Callable[[dict[str, Any]], MarketMessage]] = {
    TRADE: trade_to_proto, QUOTE: quote_to_proto}


def _micros(column: pa.ChunkedArray | pa.Array) -> list[int]:
    return pc.cast(column, pa.int64()).to_pylist()


def _timestamp(value: int) -> Timestamp:
    seconds, micros = divmod(value, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def _decimal_texts(column: pa.ChunkedArray | pa.Array) -> list[str | None]:
    return [None if value is None else decimal_text(value) for value in column.to_pylist()]


def _vendor_data(column: pa.ChunkedArray | pa.Array) -> list[dict[str, str] | None]:
    return [None if value is None else dict(value) for value in column.to_pylist()]


def trades_from_rows(table: pa.Table) -> list[Trade]:
    c = {name: table[name] for name in table.column_names}
    return [
        Trade(message_id=message_id, trade_id=trade_id, symbol=symbol, exchange=exchange,
              asset_class=ASSET_CLASS_VALUES[asset_class], timestamp=_timestamp(timestamp), price=price,
              quantity=quantity, currency=currency, side=SIDE_VALUES[side], trade_conditions=conditions,
              source_sequence=source_sequence, ingestion_timestamp=_timestamp(ingested),
              platform_sequence=platform_sequence, vendor_data=vendor_data)
        for (message_id, trade_id, symbol, exchange, asset_class, timestamp, price, quantity, currency, side,
             conditions, source_sequence, ingested, platform_sequence, vendor_data) in zip(
            c["message_id"].to_pylist(), c["trade_id"].to_pylist(), c["symbol"].to_pylist(),
            c["exchange"].to_pylist(), c["asset_class"].to_pylist(), _micros(c["timestamp"]),
            _decimal_texts(c["price"]), _decimal_texts(c["quantity"]), c["currency"].to_pylist(),
            c["side"].to_pylist(), c["trade_conditions"].to_pylist(), c["source_sequence"].to_pylist(),
            _micros(c["ingestion_timestamp"]), c["platform_sequence"].to_pylist(), _vendor_data(c["vendor_data"]),
            strict=True)
    ]


def quotes_from_rows(table: pa.Table) -> list[Quote]:
    c = {name: table[name] for name in table.column_names}
    return [
        Quote(message_id=message_id, quote_id=quote_id, symbol=symbol, exchange=exchange,
              asset_class=ASSET_CLASS_VALUES[asset_class], timestamp=_timestamp(timestamp), bid_price=bid_price,
              bid_quantity=bid_quantity, ask_price=ask_price, ask_quantity=ask_quantity, currency=currency,
              source_sequence=source_sequence, ingestion_timestamp=_timestamp(ingested),
              platform_sequence=platform_sequence, vendor_data=vendor_data)
        for (message_id, quote_id, symbol, exchange, asset_class, timestamp, bid_price, bid_quantity, ask_price,
             ask_quantity, currency, source_sequence, ingested, platform_sequence, vendor_data) in zip(
            c["message_id"].to_pylist(), c["quote_id"].to_pylist(), c["symbol"].to_pylist(),
            c["exchange"].to_pylist(), c["asset_class"].to_pylist(), _micros(c["timestamp"]),
            _decimal_texts(c["bid_price"]), _decimal_texts(c["bid_quantity"]), _decimal_texts(c["ask_price"]),
            _decimal_texts(c["ask_quantity"]), c["currency"].to_pylist(), c["source_sequence"].to_pylist(),
            _micros(c["ingestion_timestamp"]), c["platform_sequence"].to_pylist(), _vendor_data(c["vendor_data"]),
            strict=True)
    ]


FROM_ROWS: dict[RecordKind, Callable[[pa.Table], list[Any]]] = {TRADE: trades_from_rows, QUOTE: quotes_from_rows}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame(message: MarketMessage) -> bytes:
    payload = message.SerializeToString()
    return FIELD_ONE_TAG + _varint(len(payload)) + payload


@dataclass(slots=True)
class LiveItem:
    """One decoded Kafka record, ready to be sent to any number of subscribers."""

    partition: int
    offset: int
    symbol: str
    exchange: str
    timestamp: int  # µs
    framed: bytes
    message: MarketMessage


_SCALE = 10 ** DECIMAL_SCALE
_LIMIT = 10 ** DECIMAL_PRECISION  # unscaled decimal(38,18) values are below this in magnitude
_TEXT_FIELDS = {TRADE: ("trade_id", "symbol", "exchange", "currency"),
                QUOTE: ("quote_id", "symbol", "exchange", "currency")}


def _units(raw: bytes | None) -> int | None:
    """The unscaled integer of an Avro decimal, or None if absent or beyond decimal(38,18)."""
    if raw is None or len(raw) > 16:
        return None
    units = int.from_bytes(raw, "big", signed=True)
    return units if -_LIMIT < units < _LIMIT else None


def _units_text(units: int) -> str:
    """decimal_text of units × 10^-18."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), _SCALE)
    return f"{sign}{whole}.{fraction:018d}".rstrip("0") if fraction else f"{sign}{whole}"


def _optional_text(raw: bytes | None) -> str | None:
    units = _units(raw)
    return None if units is None else _units_text(units)


class LiveDecoder:
    """Kafka value → proto message, the fan-out's hot path. A value in the current schema version is read with
    the logical types stripped (raw longs and two's-complement bytes: no datetime or Decimal objects) and mapped
    straight to the message, when quick checks show the record valid. Any other value — an older schema version,
    or a record the checks cannot clear — takes the core path: avro.decode, VALIDATORS, trade_to_proto /
    quote_to_proto. Both paths give the same messages (tests/test_query_convert.py)."""

    def __init__(self, kind: RecordKind):
        self.kind = kind
        current = CURRENT[kind]
        self._header = MAGIC + current.fingerprint
        self._raw_schema = fastavro.parse_schema(without_logical_types(current.schema))
        self._texts = _TEXT_FIELDS[kind]
        self._fast = self._trade if kind == TRADE else self._quote

    def decode(self, value: bytes) -> tuple[MarketMessage, str, str, int] | None:
        """(message, symbol, exchange, timestamp µs), or None for a value that is not a valid record of the kind
        (the writer refuses those too)."""
        if value[:HEADER_SIZE] == self._header:
            body = BytesIO(value)
            body.seek(HEADER_SIZE)
            try:
                raw = fastavro.schemaless_reader(body, self._raw_schema, None)
            except Exception:  # noqa: BLE001 - a corrupt body: the core path below says it is invalid
                raw = None
            if raw is not None and body.tell() == len(value) and all(
                    0 < len(raw[name]) <= MAX_TEXT_LENGTH for name in self._texts):
                message = self._fast(raw)
                if message is not None:
                    return message, raw["symbol"], raw["exchange"], raw["timestamp"]
        return self._core(value)

    def _core(self, value: bytes) -> tuple[MarketMessage, str, str, int] | None:
        try:
            kind, record = decode(value)
            if kind != self.kind:
                return None
            VALIDATORS[kind](record)
        except (DecodeError, FieldError):
            return None
        message = TO_PROTO[kind](record)
        return message, record["symbol"], record["exchange"], micros(record["timestamp"])

    @staticmethod
    def _trade(raw: dict[str, Any]) -> Trade | None:
        price, quantity = _units(raw["price"]), _units(raw["quantity"])
        if price is None or quantity is None or price <= 0 or quantity <= 0:
            return None  # left to the validator (a zero or negative price is valid for futures and options)
        return Trade(message_id=raw["message_id"], trade_id=raw["trade_id"], symbol=raw["symbol"],
                     exchange=raw["exchange"], asset_class=ASSET_CLASS_VALUES[raw["asset_class"]],
                     timestamp=_timestamp(raw["timestamp"]), price=_units_text(price),
                     quantity=_units_text(quantity), currency=raw["currency"], side=SIDE_VALUES[raw["side"]],
                     trade_conditions=raw["trade_conditions"], source_sequence=raw["source_sequence"],
                     ingestion_timestamp=_timestamp(raw["ingestion_timestamp"]),
                     platform_sequence=raw["platform_sequence"], vendor_data=raw["vendor_data"])

    @staticmethod
    def _quote(raw: dict[str, Any]) -> Quote | None:
        for side in ("bid", "ask"):
            price, quantity = raw[f"{side}_price"], raw[f"{side}_quantity"]
            if (price is None) != (quantity is None):
                return None
            if price is not None and (_units(price) is None or (_units(quantity) or 0) <= 0):
                return None
        return Quote(message_id=raw["message_id"], quote_id=raw["quote_id"], symbol=raw["symbol"],
                     exchange=raw["exchange"], asset_class=ASSET_CLASS_VALUES[raw["asset_class"]],
                     timestamp=_timestamp(raw["timestamp"]), bid_price=_optional_text(raw["bid_price"]),
                     bid_quantity=_optional_text(raw["bid_quantity"]), ask_price=_optional_text(raw["ask_price"]),
                     ask_quantity=_optional_text(raw["ask_quantity"]), currency=raw["currency"],
                     source_sequence=raw["source_sequence"],
                     ingestion_timestamp=_timestamp(raw["ingestion_timestamp"]), platform_sequence=raw["platform_sequence"], vendor_data=raw["vendor_data"])


DECODERS = {kind: LiveDecoder(kind) for kind in (TRADE, QUOTE)}


def live_item(kind: RecordKind, message: Message) -> LiveItem | None:
    """None for a value that is not a valid record of `kind` (the writer refuses those too)."""
    decoded = DECODERS[kind].decode(message.value() or b"")
    if decoded is None:
        return None
    proto, symbol, exchange, timestamp = decoded
    return LiveItem(message.partition(), message.offset(), symbol, exchange, timestamp, frame(proto), proto)


def response_bytes(kind: RecordKind, framed: bytes, resume_token: str, replay: bool) -> bytes:
    """A Subscribe*Response: the framed records, then the resume token, replay flag and server time."""
    now = time.time_ns()
    trailer = RESPONSES[kind](resume_token=resume_token, replay=replay,
                              server_time=Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000))
    return framed + trailer.SerializeToString()
