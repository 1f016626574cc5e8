"""Published protobuf messages → their Kafka message values (Avro v2, single-object encoded) and keys, a batch at
a time: the per-item hot path of PublishTrades/PublishQuotes.

Trades are written in one pass, field by field, with no record dict, Decimal or datetime: a decimal string is
read straight into its unscaled decimal(38,18) integer. That pass only takes what it can judge at a glance
(plain decimals that fit, canonical message ids, timestamps from 1970 to 9999, texts within their limits, known
enum values); any other trade goes through trade_from_proto and avro.encode, which accept it or reject it with
its field and reason. Both write the same bytes (tests check it), so which path a trade took never shows."""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from k2.core import avro
from k2.core.avro_writer import write_long, write_timestamp_micros
from k2.core.protos import ASSET_CLASS_NAMES, SIDE_NAMES, quote_from_proto, trade_from_proto
from k2.core.records import (
    DECIMAL_SCALE,
    MAX_INTEGER_DIGITS,
    MAX_TEXT_LENGTH,
    QUOTE,
    TRADE,
    FieldError,
    Record,
    RecordKind,
    new_message_id,
)
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade

MessageIds = Callable[[int], str] | None  # the message_id of item i when it has none (None: a random UUID)

# An unsigned decimal without exponent, at most 20 integer and 18 fractional digits: fits decimal(38,18) as written.
_PLAIN_DECIMAL = re.compile(rf"([0-9]{{1,{MAX_INTEGER_DIGITS}}})(?:\.([0-9]{{1,{DECIMAL_SCALE}}}))?").fullmatch
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
# 10^(18 - digits): scales a decimal's digits read as an integer to its unscaled decimal(38,18) value.
_SCALE_FOR_FRACTION_DIGITS = [10 ** (DECIMAL_SCALE - digits) for digits in range(DECIMAL_SCALE + 1)]
_SECONDS_BEFORE_YEAR_10000 = 253_402_300_800


@dataclass
class EncodedBatch:
    """The accepted items as Kafka messages (keys[i], values[i]) and their positions in the batch; the rejected
    ones by position with the reason."""

    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    rejected: list[tuple[int, FieldError]] = field(default_factory=list)


def _enum_tags(kind: RecordKind, name: str, proto_names: dict[int, str]) -> dict[int, bytes]:
    """proto enum value → the Avro enum's index as written (one zig-zag byte)."""
    [avro_enum] = [f["type"] for f in avro.CURRENT[kind].schema["fields"] if f["name"] == name]
    return {value: bytes([avro_enum["symbols"].index(symbol) << 1]) for value, symbol in proto_names.items()}


_ASSET_CLASS_TAGS = _enum_tags(TRADE, "asset_class", ASSET_CLASS_NAMES)
_SIDE_TAGS = _enum_tags(TRADE, "side", SIDE_NAMES)
_TRADE_HEADER = avro.MAGIC + avro.CURRENT[TRADE].fingerprint


def _write_timestamp(out: bytearray, micros: int) -> None:
    """write_long for a timestamp in microseconds, unrolled for those from 1979 to 3111 (8 bytes written)."""
    zigzag = micros << 1
    if 1 << 49 <= zigzag < 1 << 56:
        out += bytes((zigzag & 127 | 128, zigzag >> 7 & 127 | 128, zigzag >> 14 & 127 | 128,
                      zigzag >> 21 & 127 | 128, zigzag >> 28 & 127 | 128, zigzag >> 35 & 127 | 128,
                      zigzag >> 42 & 127 | 128, zigzag >> 49))
    else:
        write_long(out, micros)


def _write_text(out: bytearray, text: str) -> None:
    data = text.encode()
    size = len(data)
    if size < 64:
        out.append(size << 1)
    else:
        write_long(out, size)
    out += data


def _encode_exactly(kind: RecordKind, convert: Callable[..., Record], message: Any, index: int,
                    received: datetime, message_ids: MessageIds, batch: EncodedBatch) -> None:
    try:
        record = convert(message, received, message_ids and message_ids(index))
    except FieldError as error:
        batch.rejected.append((index, error))
        return
    batch.keys.append(record["symbol"].encode())
    batch.values.append(avro.encode(kind, record))
    batch.indexes.append(index)


def encode_trades(messages: Sequence[Trade], received: datetime, message_ids: MessageIds) -> EncodedBatch:
    """Validates and encodes published trades, each exactly as trade_from_proto + avro.encode would; `received`
    is their ingestion timestamp."""
    batch = EncodedBatch()
    keys, values, indexes = batch.keys, batch.values, batch.indexes
    ingestion_timestamp = bytearray()
    write_timestamp_micros(ingestion_timestamp, received)
    texts: dict[str, bytes] = {}  # symbol, exchange, currency as written: few distinct ones per batch
    symbol_keys: dict[str, bytes] = {}
    asset_class_tags, side_tags, scale = _ASSET_CLASS_TAGS, _SIDE_TAGS, _SCALE_FOR_FRACTION_DIGITS
    plain_decimal, canonical_uuid = _PLAIN_DECIMAL, _CANONICAL_UUID
    for index, message in enumerate(messages):
        # Everything is read and checked before anything is written; a trade that is not plain goes the exact way.
        message_id = message.message_id
        trade_id, symbol, exchange, currency = message.trade_id, message.symbol, message.exchange, message.currency
        asset_class = asset_class_tags.get(message.asset_class)
        side = side_tags.get(message.side)
        timestamp = message.timestamp
        seconds, nanos = timestamp.seconds, timestamp.nanos
        price, quantity = message.price, message.quantity
        price_match, quantity_match = plain_decimal(price), plain_decimal(quantity)
        if (asset_class is None or side is None or price_match is None or quantity_match is None
                or not (0 <= seconds < _SECONDS_BEFORE_YEAR_10000 and 0 <= nanos < 1_000_000_000)
                or nanos % 1000 or not (seconds or nanos or message.HasField("timestamp"))
                or not (trade_id and symbol and exchange and currency)
                or len(trade_id) > MAX_TEXT_LENGTH or len(symbol) > MAX_TEXT_LENGTH
                or len(exchange) > MAX_TEXT_LENGTH or len(currency) > MAX_TEXT_LENGTH
                or (message_id and canonical_uuid(message_id) is None)):
            _encode_exactly(TRADE, trade_from_proto, message, index, received, message_ids, batch)
            continue
        whole, fraction = price_match.groups()
        price_unscaled = int(whole + fraction) * scale[len(fraction)] if fraction else int(whole) * scale[0]
        whole, fraction = quantity_match.groups()
        quantity_unscaled = int(whole + fraction) * scale[len(fraction)] if fraction else int(whole) * scale[0]
        if not (price_unscaled and quantity_unscaled):  # zero: positive or not depends on the asset class
            _encode_exactly(TRADE, trade_from_proto, message, index, received, message_ids, batch)
            continue

        out = bytearray(_TRADE_HEADER)
        out.append(72)  # a UUID's 36 characters
        out += (message_id or (message_ids(index) if message_ids else new_message_id())).encode()
        data = trade_id.encode()
        if len(data) < 64:
            out.append(len(data) << 1)
            out += data
        else:
            _write_text(out, trade_id)
        for text in (symbol, exchange):
            written = texts.get(text)
            if written is None:
                written = texts[text] = _text_bytes(text)
            out += written
        out += asset_class
        _write_timestamp(out, seconds * 1_000_000 + nanos // 1000)
        for unscaled in (price_unscaled, quantity_unscaled):
            data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
            out.append(len(data) << 1)  # at most 16 bytes
            out += data
        written = texts.get(currency)
        if written is None:
            written = texts[currency] = _text_bytes(currency)
        out += written
        out += side
        conditions = message.trade_conditions
        if conditions:
            write_long(out, len(conditions))
            for condition in conditions:
                _write_text(out, condition)
        out.append(0)
        sequence = message.source_sequence
        if sequence or message.HasField("source_sequence"):
            out.append(2)
            write_long(out, sequence)
        else:
            out.append(0)
        out += ingestion_timestamp
        sequence = message.platform_sequence
        if sequence or message.HasField("platform_sequence"):
            out.append(2)
            write_long(out, sequence)
        else:
            out.append(0)
        vendor_data = message.vendor_data
        if vendor_data:
            out.append(2)
            write_long(out, len(vendor_data))
            for name in vendor_data:  # the map's own order, as dict(vendor_data) has it
                _write_text(out, name)
                _write_text(out, vendor_data[name])
        out.append(0)

        key = symbol_keys.get(symbol)
        if key is None:
            key = symbol_keys[symbol] = symbol.encode()
        keys.append(key)
        values.append(bytes(out))
        indexes.append(index)
    return batch


def _text_bytes(text: str) -> bytes:
    out = bytearray()
    _write_text(out, text)
    return bytes(out)


def encode_quotes(messages: Sequence[Quote], received: datetime, message_ids: MessageIds) -> EncodedBatch:
    """Validates and encodes published quotes (quote_from_proto + avro.encode)."""
    batch = EncodedBatch()
    for index, message in enumerate(messages):
        _encode_exactly(QUOTE, quote_from_proto, message, index, received, message_ids, batch)
    return batch
