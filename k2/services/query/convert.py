"""Kafka messages → k2.marketdata.v1 messages, and subscription responses as bytes (Arrow rows are encoded by
k2.services.query.wire).

Live and replayed records become "framed" bytes: the serialized message behind the tag and length of field 1 of
Subscribe{Trades,Quotes}Response (`repeated ... trades|quotes = 1`). A response is then the concatenation of its
framed records and the serialized remaining fields, so each record is serialized once however many subscribers
receive it, and subscribers with the same filter share the very same response bytes.

Live and replayed Kafka messages are decoded a batch at a time by the native transcoder (k2._native.LiveBatch,
native/src/fanout_transcode.rs): a record in the current schema version (in either Kafka framing) that is plainly
valid goes straight from Avro to its framed bytes; any other (an older version, or a record its checks cannot
clear) is handed back to decode_plain, the plain path, which refuses it or converts it. Both give the same bytes
(tests/test_query_convert.py)."""

import functools
import time
from collections.abc import Callable
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from k2._native import LiveBatch, LiveTranscoder
from k2.core.avro import CURRENT, DecodeError
from k2.core.framing import SINGLE_OBJECT, Framing
from k2.core.protos import quote_to_proto, trade_to_proto
from k2.core.records import (
    MAX_TEXT_LENGTH,
    NATIVE_BOTH_OR_NEITHER,
    NATIVE_CHECKED_TEXTS,
    NATIVE_LIMITS,
    NATIVE_POSITIVE,
    QUOTE,
    TRADE,
    VALIDATORS,
    FieldError,
    RecordKind,
)
from k2.core.timestamps import micros
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade
from k2.query.v1 import query_pb2
from k2.services.query.wire import MESSAGE_TYPES, varint

MarketMessage = Trade | Quote
FIELD_ONE_TAG = b"\x0a"  # field 1, wire type 2 (length-delimited)
RESPONSES = {TRADE: query_pb2.SubscribeTradesResponse, QUOTE: query_pb2.SubscribeQuotesResponse}
TO_PROTO: dict[RecordKind, Callable[[dict[str, Any]], MarketMessage]] = {
    TRADE: trade_to_proto,
    QUOTE: quote_to_proto,
}


def frame(message: MarketMessage) -> bytes:
    """Deterministic, so that a map's entries come in one order (the one the native transcoder writes too)."""
    payload = message.SerializeToString(deterministic=True)
    return FIELD_ONE_TAG + varint(len(payload)) + payload


def decode_plain(
    kind: RecordKind, value: bytes, framing: Framing = SINGLE_OBJECT
) -> tuple[MarketMessage, str, str, int] | None:
    """Kafka value → (message, symbol, exchange, timestamp µs) by the plain path (any schema version, the
    validators), or None for a value that is not a valid record of the kind (the writer refuses those too)."""
    try:
        found, record = framing.decode(value)
        if found != kind:
            return None
        VALIDATORS[kind](record)
    except (DecodeError, FieldError):
        return None
    return TO_PROTO[kind](record), record["symbol"], record["exchange"], micros(record["timestamp"])


def _native_type(kind: RecordKind, avro_field: dict[str, Any], proto: FieldDescriptor) -> tuple[str, Any]:
    """(the transcoder's name for how the field is read and written, its argument)"""
    avro_type = avro_field["type"]
    optional = isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null"
    inner = avro_type[1] if optional else avro_type
    inner = {"type": inner} if isinstance(inner, str) else inner
    base, logical = inner.get("type"), inner.get("logicalType")
    string = proto.type == FieldDescriptor.TYPE_STRING and not proto.is_repeated
    found: tuple[str, Any] | None = None
    if base == "string" and not optional and string:
        found = "text", None
    elif base == "enum" and not optional and proto.enum_type is not None:  # set exactly for enum fields
        enum = proto.enum_type
        prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
        numbers = {value.name.removeprefix(prefix): value.number for value in enum.values}
        found = "enum", [numbers.get(symbol, 0) for symbol in inner["symbols"]]
    elif (
        (base, logical) == ("long", "timestamp-micros")
        and not optional
        and proto.message_type is not None
        and proto.message_type.full_name == "google.protobuf.Timestamp"
    ):
        found = "timestamp-micros", None
    elif (base, logical) == ("bytes", "decimal") and string:
        found = "optional-decimal" if optional else "decimal", (inner["precision"], inner.get("scale", 0))
    elif (base, logical) == ("long", None) and optional and proto.type == FieldDescriptor.TYPE_INT64:
        found = "optional-long", None
    elif (
        base == "array"
        and inner.get("items") == "string"
        and not optional
        and proto.is_repeated
        and proto.type == FieldDescriptor.TYPE_STRING
    ):
        found = "text-list", None
    elif (
        base == "map"
        and inner.get("values") == "string"
        and optional
        and proto.message_type is not None
        and proto.message_type.GetOptions().map_entry
    ):
        found = "optional-text-map", None
    if found is None:
        raise ValueError(
            f"{kind} field {avro_field['name']}: the live transcoder has no mapping of Avro "
            f"{avro_type} to proto {proto.full_name}"
        )
    return found


@functools.lru_cache(maxsize=8)
def _transcoder(kind: RecordKind, headers: tuple[bytes, ...]) -> LiveTranscoder:
    """The native transcoder of the current schema version's records (messages starting with one of `headers`):
    the Avro fields in order, each mapped to the message field of the same name (as wire.py and trade_to_proto /
    quote_to_proto map them)."""
    current = CURRENT[kind]
    descriptor = cast(Descriptor, MESSAGE_TYPES[kind].DESCRIPTOR)
    avro_fields = current.schema["fields"]
    names = [field["name"] for field in avro_fields]
    if sorted(names) != sorted(descriptor.fields_by_name):
        raise ValueError(
            f"{kind}: the Avro fields {names} are not the message's {list(descriptor.fields_by_name)}"
        )
    fields = []
    for avro_field in avro_fields:
        name = avro_field["name"]
        proto = descriptor.fields_by_name[name]
        native_type, argument = _native_type(kind, avro_field, proto)
        fields.append(
            (
                native_type,
                proto.number,
                proto.has_presence,
                name in NATIVE_CHECKED_TEXTS[kind],
                name in NATIVE_POSITIVE[kind],
                argument,
            )
        )
    pairs = [(names.index(a), names.index(b)) for a, b in NATIVE_BOTH_OR_NEITHER[kind]]
    routing = (names.index("symbol"), names.index("exchange"), names.index("timestamp"))
    return LiveTranscoder(list(headers), fields, pairs, MAX_TEXT_LENGTH, NATIVE_LIMITS, routing)


def transcoder(kind: RecordKind, framing: Framing = SINGLE_OBJECT) -> LiveTranscoder:
    return _transcoder(kind, framing.current_headers(kind))


def decode_message(kind: RecordKind, value: bytes, framing: Framing = SINGLE_OBJECT) -> MarketMessage | None:
    """One Kafka value as decode_plain's message (natively when the transcoder clears it): GetLatest's."""
    serialized = transcoder(kind, framing).message(value)
    if serialized is None:
        decoded = decode_plain(kind, value, framing)
        return None if decoded is None else decoded[0]
    return MESSAGE_TYPES[kind].FromString(serialized)


def decode_batch(kind: RecordKind, batch: LiveBatch, framing: Framing = SINGLE_OBJECT) -> int:
    """Decodes a batch of `kind` messages (natively; what the transcoder hands back, by the plain path); returns how many
    messages are not valid records of the kind (the writer refuses those too)."""
    refused = 0
    for index, value in batch.decode(transcoder(kind, framing)):
        decoded = decode_plain(kind, value, framing)
        if decoded is None:
            refused += 1
        else:
            message, symbol, exchange, timestamp = decoded
            batch.accept(index, frame(message), symbol, exchange, timestamp)
    return refused


def response_bytes(kind: RecordKind, framed: bytes, resume_token: str, replay: bool) -> bytes:
    """A Subscribe*Response: the framed records, then the resume token, replay flag and server time."""
    now = time.time_ns()
    trailer = RESPONSES[kind](
        resume_token=resume_token,
        replay=replay,
        server_time=Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000),
    )
    return framed + trailer.SerializeToString()
