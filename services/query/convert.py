"""Kafka messages → k2.marketdata.v1 messages, and subscription responses as bytes (Arrow rows are encoded by
services.query.wire).

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

from k2.core.arrow import BatchDecoder
from k2.core.avro import CURRENT, HEADER_SIZE, MAGIC, DecodeError, decode, without_logical_types
from k2.core.protos import ASSET_CLASS_VALUES, SIDE_VALUES, quote_to_proto, trade_to_proto
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
from services.query import wire
from services.query.selection import micros
from services.query.wire import varint

MarketMessage = Trade | Quote
FIELD_ONE_TAG = b"\x0a"  # field 1, wire type 2 (length-delimited)
RESPONSES = {TRADE: query_pb2.SubscribeTradesResponse, QUOTE: query_pb2.SubscribeQuotesResponse}
TO_PROTO: dict[RecordKind, Callable[[dict[str, Any]], MarketMessage]] = {
    TRADE: trade_to_proto, QUOTE: quote_to_proto}


def _timestamp(value: int) -> Timestamp:
    seconds, micros = divmod(value, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def frame(message: MarketMessage) -> bytes:
    payload = message.SerializeToString()
    return FIELD_ONE_TAG + varint(len(payload)) + payload


@dataclass(slots=True)
class LiveItem:
    """One decoded Kafka record, ready to be sent to any number of subscribers."""

    partition: int
    offset: int
    symbol: str
    exchange: str
    timestamp: int  # µs
    framed: bytes


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


BATCH_DECODERS = {kind: BatchDecoder(kind) for kind in (TRADE, QUOTE)}
# From this many messages on, a batch is decoded as a whole with Arrow kernels (the writer's BatchDecoder, then
# services.query.wire), whose fixed cost per batch is paid back by a far lower cost per message.
BATCH_DECODE_MIN = 400  # measured: below it, message by message costs less CPU per message


def live_items(kind: RecordKind, messages: list[Message]) -> tuple[list[LiveItem], list[Message]]:
    """(the valid records of `messages`, in their order; the messages that are not valid records of `kind`,
    which the writer refuses too)"""
    items: list[LiveItem] = []
    refused: list[Message] = []
    if len(messages) < BATCH_DECODE_MIN:
        decoder = DECODERS[kind]
        for message in messages:
            decoded = decoder.decode(message.value() or b"")
            if decoded is None:
                refused.append(message)
            else:
                proto, symbol, exchange, timestamp = decoded
                items.append(LiveItem(message.partition(), message.offset(), symbol, exchange, timestamp,
                                      frame(proto)))
        return items, refused
    batch = BATCH_DECODERS[kind].decode([message.value() or b"" for message in messages])
    order = pc.sort_indices(batch.rows)  # rows the fast path could not take come last: back to Kafka order
    table = batch.table.take(order)
    for row, symbol, exchange, timestamp, framed in zip(
            batch.rows.take(order).to_pylist(), table["symbol"].to_pylist(), table["exchange"].to_pylist(),
            table["timestamp"].cast(pa.int64()).to_pylist(), wire.framed(kind, table).to_pylist(), strict=True):
        message = messages[row]
        items.append(LiveItem(message.partition(), message.offset(), symbol, exchange, timestamp, framed))
    return items, [messages[rejection.index] for rejection in batch.rejected]


def response_bytes(kind: RecordKind, framed: bytes, resume_token: str, replay: bool) -> bytes:
    """A Subscribe*Response: the framed records, then the resume token, replay flag and server time."""
    now = time.time_ns()
    trailer = RESPONSES[kind](resume_token=resume_token, replay=replay,
                              server_time=Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000))
    return framed + trailer.SerializeToString()
